"""The rollback consumer: regression guards with statistics, hysteresis and dry-run,
emitting kill switches. See ``docs/rollback.md``; the fold is
:class:`consumers.rollback.projection.RollbackProjection`."""
