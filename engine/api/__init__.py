"""The operator API (``ro.api.*``, a ``nats.micro`` service): status, kill, resume, set,
evaluate; and reading the control commands back from the log for it."""
