"""Evidence for guards, read from the rollback consumer's own canary-stats fold.

The rollback consumer never reads derived snapshots (``ro.stats.*``): it folds the raw
log through its own :class:`consumers.canary_stats.CanaryStats`, one instance per
rollout and *evidence epoch*. A manual re-enable after a kill starts a new epoch, so
the samples that caused the kill cannot re-trigger it (seed 001's recovery case).

:class:`StatsEvidence` adapts the canary-stats read API to the :class:`Evidence`
protocol of :mod:`consumers.rollback.guards`, caching each window's view for the
duration of one evaluation (several guards share a view).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from consumers.rollback.guards import EMPTY, Summary
from consumers.rollback.policy import QUALITY, Policy

__all__ = ["StatsEvidence", "new_stats"]


def new_stats(policy: Policy) -> Any:
    """A fresh canary-stats fold sized by the policy's windows."""
    from consumers.canary_stats import CanaryStats

    return CanaryStats(last_n=policy.last_n, window_ms=policy.window_ms)


class StatsEvidence:
    """One evaluation's view of one rollout's evidence."""

    __slots__ = ("_rollout", "_stats", "_views")

    def __init__(self, stats: Any, rollout: str) -> None:
        self._stats = stats
        self._rollout = rollout
        self._views: dict[str, Any] = {}

    def _view(self, window: str) -> Any:
        view = self._views.get(window)
        if view is None:
            view = self._views[window] = self._stats.view(self._rollout, window)
        return view

    def summary(self, variant: str, metric: str, window: str) -> Summary:
        v = self._view(window).get(variant)
        if v is None:
            return EMPTY
        if metric == QUALITY:
            return Summary(v.quality_n, v.quality_mean, v.quality_var, math.nan, math.nan, math.nan)
        m = v.metrics.get(metric)
        if m is None:
            return EMPTY
        return Summary(m.n, m.mean, math.nan, m.p50, m.p95, m.p99)

    def samples(self, variant: str, metric: str, window: str) -> Sequence[float]:
        return self._stats.samples(self._rollout, variant, metric, window)
