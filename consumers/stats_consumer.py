"""The ``canary_stats`` consumer: the canary-stats fold, published for people and dashboards.

After committed batches (at most once a second, wall clock: this is the publishing
edge, not the reducer) each rollout touched since the last round gets a summary:

- on ``ro.stats.<rollout>`` (core NATS, fire and forget) and
- in KV ``ro_state`` under ``stats.<rollout>`` (the latest one, for late readers),

as JSON: ``{"rollout", "now_ms", "windows": {"last_n"|"time"|"all": {variant: VariantView}}}``.
Deciders never read these (the rollback consumer folds the raw log with the same
reducer); they serve ``rollout status``, dashboards and the API.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from rollout_engine.consumers.canary_stats import WINDOWS, CanaryStats
from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.runtime import Consumer, Runner
from rollout_engine.engine.settings import Settings
from rollout_engine.events import subjects

__all__ = ["StatsPublisher", "build", "summary"]

log = logging.getLogger(__name__)

register(ConsumerSpec("canary_stats", __name__, "per-variant canary stats over last-N, 5-minute and all-time windows"))

_json = msgspec.json.Encoder()


def summary(stats: CanaryStats, rollout: str) -> bytes:
    """One rollout's published summary (JSON)."""
    windows = {window: stats.view(rollout, window) for window in WINDOWS}
    return _json.encode({"rollout": rollout, "now_ms": stats.now_ms(rollout), "windows": windows})


class StatsPublisher:
    """Throttled publication of touched rollouts' summaries (core NATS + KV).

    A round runs at most every ``interval_s`` and spends at most ``budget_s`` (wall
    clock) computing and sending summaries: a few percent of the consumer's time
    whatever the number of rollouts. Rollouts wait in first-touched order, so a
    rollout left over by one round goes first in the next: none starves.
    """

    def __init__(self, stats: CanaryStats, interval_s: float = 1.0, budget_s: float = 0.04) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self.budget_s = budget_s
        self.touched: dict[str, None] = {}  # an ordered set
        self._last = 0.0

    async def on_start(self, runner: Runner) -> None:
        for rollout in self.stats.rollouts():  # the last process may have died before publishing
            self.touched.setdefault(rollout)

    async def after_commit(self, runner: Runner, result: BatchResult) -> None:
        for key in result.parts:
            if key:
                self.touched.setdefault(key)
        now = time.monotonic()
        if not self.touched or now - self._last < self.interval_s:
            return
        self._last = now
        await self.flush(runner, self.budget_s)

    async def flush(self, runner: Runner, budget_s: float) -> None:
        """Publish touched rollouts, oldest first, until done or ``budget_s`` is spent."""
        kv: Any = await runner.kv()
        deadline = time.perf_counter() + budget_s
        while self.touched and time.perf_counter() < deadline:
            rollout = next(iter(self.touched))
            del self.touched[rollout]
            payload = summary(self.stats, rollout)
            await runner.nc.publish(subjects.stats(rollout), payload)
            try:
                await kv.put(f"stats.{rollout}", payload)
            except Exception as exc:
                log.warning("stats of %s not stored in KV: %s", rollout, exc)
                self.touched.setdefault(rollout)
                return

    async def on_stop(self, runner: Runner) -> None:
        if self.touched:  # one last, longer round; the rest is republished by the next on_start
            await self.flush(runner, 0.25)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer canary_stats`` runs."""
    stats = CanaryStats()
    publisher = StatsPublisher(stats)
    return Consumer(stats, after_commit=publisher.after_commit, on_start=publisher.on_start, on_stop=publisher.on_stop)
