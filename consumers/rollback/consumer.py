"""The ``rollback`` consumer: the rollback projection run by the shared runtime.

The runtime folds the log into :class:`RollbackProjection`, commits its snapshot parts,
position and emitted commands in one SQLite transaction, and relays the commands with
their deterministic ids as ``Nats-Msg-Id``. This module only adds the publishing edge:
after committed batches (at most once a second, wall clock: an edge, not the reducer),
each touched rollout's :meth:`RollbackProjection.status` goes to KV ``ro_state`` under
``rollback.<rollout>``, where ``rollout status`` and the API's ``evaluation`` read it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from consumers.folding import BatchResult
from consumers.registry import ConsumerSpec, register
from consumers.rollback.projection import RollbackProjection
from consumers.runtime import Consumer, Runner
from engine.settings import Settings

__all__ = ["StatusPublisher", "build"]

log = logging.getLogger(__name__)

register(ConsumerSpec("rollback", __name__, "regression guards with statistics and hysteresis; emits kill switches"))

_json = msgspec.json.Encoder()


class StatusPublisher:
    """Throttled KV puts of touched rollouts' evaluation status."""

    def __init__(self, projection: RollbackProjection, interval_s: float = 1.0, per_round: int = 1000) -> None:
        self.projection = projection
        self.interval_s = interval_s
        self.per_round = per_round
        self.touched: set[str] = set()
        self._last = 0.0

    async def on_start(self, runner: Runner) -> None:
        self.touched.update(self.projection.rollouts)

    async def after_commit(self, runner: Runner, result: BatchResult) -> None:
        self.touched.update(key for key in result.parts if key)
        now = time.monotonic()
        if not self.touched or now - self._last < self.interval_s:
            return
        self._last = now
        await self.flush(runner)

    async def flush(self, runner: Runner) -> None:
        batch = sorted(self.touched)[: self.per_round]
        self.touched.difference_update(batch)
        kv: Any = await runner.kv()
        for rollout in batch:
            try:
                await kv.put(f"rollback.{rollout}", _json.encode(self.projection.status(rollout)))
            except Exception as exc:  # KV is a cache for people; the log already has the commands
                log.warning("rollback status of %s not stored in KV: %s", rollout, exc)

    async def on_stop(self, runner: Runner) -> None:
        while self.touched:
            await self.flush(runner)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer rollback`` runs."""
    projection = RollbackProjection()
    publisher = StatusPublisher(projection)
    return Consumer(projection, after_commit=publisher.after_commit, on_start=publisher.on_start,
                    on_stop=publisher.on_stop)
