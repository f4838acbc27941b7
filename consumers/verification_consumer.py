"""The ``verification`` consumer: the verification-retry queue as a durable consumer.

The runtime relays what the fold emits (``RecheckRequest`` and ``RecheckClosed`` on
``ro.ctl.<rollout>.recheck|recheck_closed``, with deterministic ids). The engine
exports the queue's depth and oldest age as the ``rollout_recheck_pending`` and
``rollout_recheck_oldest_age_seconds`` gauges after each commit
(``engine/stack/consumer_runner.py``), so a queue that grows is an alert.
"""

from __future__ import annotations

from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.verification import VerificationProjection

__all__ = ["build"]

register(ConsumerSpec("verification", __name__, "verification-retry queue: re-check requests by event time"))


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer verification`` runs (it reads no settings)."""
    return Consumer(VerificationProjection())
