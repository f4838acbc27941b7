"""Running the engine: the embedded nats-server (or a loopback cluster), the supervised
consumer processes, engine ticks, partition ownership, per-role credentials and TLS, the
Prometheus endpoint and the demo. ``rollout up`` is built from these parts."""
