"""The ``rollback`` consumer: the rollback projection run by the shared runtime.

The runtime folds the log into :class:`RollbackProjection`, commits its snapshot parts,
position and emitted commands in one SQLite transaction, and relays the commands under
the engine's keyed ``Nats-Msg-Id`` of their deterministic ids. This module only adds the publishing edge:
after committed batches (at most once a second, wall clock: an edge, not the reducer),
each touched rollout's :meth:`RollbackProjection.status` goes to KV ``ro_state`` under
``rollback.<rollout>``, where ``rollout status`` and the API's ``evaluation`` read it,
and to ``ro.stats.<rollout>.eval`` (core NATS), where ``rollout status --watch`` and
``rollout wait --for healthy`` get it pushed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.runtime import Consumer, Runner
from rollout_engine.engine.settings import Settings
from rollout_engine.events import subjects

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
        self._task: asyncio.Task[None] | None = None

    async def on_start(self, runner: Runner) -> None:
        self.touched.update(self.projection.rollouts)

    async def after_commit(self, runner: Runner, result: BatchResult) -> None:
        self.touched.update(key for key in result.parts if key)
        now = time.monotonic()
        if not self.touched or now - self._last < self.interval_s or (self._task and not self._task.done()):
            return
        self._last = now
        # statuses are taken now (the fold is single-threaded); the KV round trips run
        # beside the fold so a kill never waits behind them
        self._task = asyncio.create_task(self._put(runner, self._take()))

    def _take(self) -> list[tuple[str, bytes]]:
        batch = sorted(self.touched)[: self.per_round]
        self.touched.difference_update(batch)
        return [(rollout, _json.encode(self.projection.status(rollout))) for rollout in batch]

    async def _put(self, runner: Runner, items: list[tuple[str, bytes]]) -> None:
        kv: Any = await runner.kv()
        for rollout, payload in items:  # fire and forget, for watchers; KV keeps the latest
            try:
                await runner.nc.publish(subjects.evaluation(rollout), payload)
            except Exception as exc:
                log.warning("rollback status of %s not pushed: %s", rollout, exc)
                break
        results = await asyncio.gather(*(kv.put(f"rollback.{rollout}", payload) for rollout, payload in items),
                                       return_exceptions=True)
        for (rollout, _), outcome in zip(items, results, strict=True):
            if isinstance(outcome, BaseException):  # KV is a cache for people; the log has the commands
                log.warning("rollback status of %s not stored in KV: %s", rollout, outcome)
                self.touched.add(rollout)

    async def flush(self, runner: Runner) -> None:
        await self._put(runner, self._take())

    async def on_stop(self, runner: Runner) -> None:
        if self._task is not None:
            await self._task
        while self.touched:
            await self.flush(runner)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer rollback`` runs."""
    projection = RollbackProjection()
    publisher = StatusPublisher(projection)
    return Consumer(projection, after_commit=publisher.after_commit, on_start=publisher.on_start,
                    on_stop=publisher.on_stop)
