"""Edges of rollout-engine that touch the outside world: NATS, SQLite, processes, CLI, SDK."""
