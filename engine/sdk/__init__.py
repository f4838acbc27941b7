"""The service SDK: what a service imports to take part in a rollout.

``RolloutClient`` assigns units to variants from the control state it follows, shadows,
records outcomes and metrics, and publishes them in batches (with a SQLite outbox while
NATS is away). This room needs only the slim install (``pip install rollout-engine``):
nats-py, msgspec, mmh3, aiosqlite and prometheus-client; it never imports scipy or
matplotlib.

::

    from rollout_engine.engine.sdk import RolloutClient
"""

from __future__ import annotations

from rollout_engine.engine.sdk.client import BufferFull, RolloutClient

__all__ = ["BufferFull", "RolloutClient"]
