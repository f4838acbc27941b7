"""The ``canary_stats`` consumer: the canary-stats fold, published for people and dashboards.

Its KV mirror (``consumers.mirror``, at most one round a second) gives each rollout
touched since the last round a summary:

- on ``ro.stats.<rollout>`` (core NATS, fire and forget) and
- in KV ``ro_state`` under ``stats.<rollout>`` (the latest one, for late readers),

as JSON: ``{"rollout", "now_ms", "windows": {"last_n"|"time"|"all": {variant: VariantView}}}``.
Deciders never read these (the rollback consumer folds the raw log with the same
reducer); they serve ``rollout status``, dashboards and the API.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.canary_stats import WINDOWS, CanaryStats
from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.events import subjects

__all__ = ["build", "summary"]

register(ConsumerSpec("canary_stats", __name__, "per-variant canary stats over last-N, 5-minute and all-time windows"))

_json = msgspec.json.Encoder()


def summary(stats: CanaryStats, rollout: str) -> bytes:
    """One rollout's published summary (JSON)."""
    windows = {window: stats.view(rollout, window) for window in WINDOWS}
    return _json.encode({"rollout": rollout, "now_ms": stats.now_ms(rollout), "windows": windows})


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer canary_stats`` runs (it reads no settings)."""
    stats = CanaryStats()
    mirror = KvMirror("stats", lambda rollout: summary(stats, rollout), interval_s=1.0, subject_of=subjects.stats)
    return Consumer(stats, mirror=mirror)
