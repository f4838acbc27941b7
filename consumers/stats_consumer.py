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

from consumers.canary_stats import WINDOWS, CanaryStats
from consumers.folding import BatchResult
from consumers.registry import ConsumerSpec, register
from consumers.runtime import Consumer, Runner
from engine.settings import Settings
from events import subjects

__all__ = ["StatsPublisher", "build", "summary"]

log = logging.getLogger(__name__)

register(ConsumerSpec("canary_stats", __name__, "per-variant canary stats over last-N, 5-minute and all-time windows"))

_json = msgspec.json.Encoder()


def summary(stats: CanaryStats, rollout: str) -> bytes:
    """One rollout's published summary (JSON)."""
    windows = {window: stats.view(rollout, window) for window in WINDOWS}
    return _json.encode({"rollout": rollout, "now_ms": stats.now_ms(rollout), "windows": windows})


class StatsPublisher:
    """Throttled publication of touched rollouts' summaries (core NATS + KV)."""

    def __init__(self, stats: CanaryStats, interval_s: float = 1.0, per_round: int = 256) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self.per_round = per_round
        self.touched: set[str] = set()
        self._last = 0.0

    async def on_start(self, runner: Runner) -> None:
        self.touched.update(self.stats.rollouts())  # the last process may have died before publishing

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
            payload = summary(self.stats, rollout)
            await runner.nc.publish(subjects.stats(rollout), payload)
            try:
                await kv.put(f"stats.{rollout}", payload)
            except Exception as exc:
                log.warning("stats of %s not stored in KV: %s", rollout, exc)
                self.touched.add(rollout)

    async def on_stop(self, runner: Runner) -> None:
        if self.touched:  # one last round; the rest is republished by the next on_start
            await self.flush(runner)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer canary_stats`` runs."""
    stats = CanaryStats()
    publisher = StatsPublisher(stats)
    return Consumer(stats, after_commit=publisher.after_commit, on_start=publisher.on_start, on_stop=publisher.on_stop)
