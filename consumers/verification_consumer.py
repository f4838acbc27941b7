"""The ``verification`` consumer: the verification-retry queue as a durable consumer.

The runtime relays what the fold emits (``RecheckRequest`` and ``RecheckClosed`` on
``ro.ctl.<rollout>.recheck|recheck_closed``, with deterministic ids); after each commit
this module refreshes the ``rollout_recheck_pending`` and
``rollout_recheck_oldest_age_seconds`` gauges, so a queue that grows is an alert.
"""

from __future__ import annotations

from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.runtime import Consumer, Runner
from rollout_engine.consumers.verification import RecheckGauges, VerificationProjection
from rollout_engine.engine.settings import Settings

__all__ = ["build"]

register(ConsumerSpec("verification", __name__, "verification-retry queue: re-check requests by event time"))

_gauges: RecheckGauges | None = None


def gauges() -> RecheckGauges:
    """The process-wide gauges (a registry refuses a second set of the same names)."""
    global _gauges
    if _gauges is None:
        _gauges = RecheckGauges()
    return _gauges


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer verification`` runs."""
    projection = VerificationProjection()

    async def refresh(runner: Runner, result: BatchResult | None = None) -> None:
        gauges().update(projection)

    return Consumer(projection, after_commit=refresh, on_start=refresh)
