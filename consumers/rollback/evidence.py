"""Evidence for guards, read from the rollback consumer's own canary-stats fold.

The rollback consumer never reads derived snapshots (``ro.stats.*``): it folds the raw
log through its own :class:`consumers.canary_stats.CanaryStats`, one instance per
rollout and *evidence epoch*. A manual re-enable after a kill starts a new epoch, so
the samples that caused the kill cannot re-trigger it (a fixed candidate re-enabled at 5%
is judged on what it does now, not on the regression that killed it).

:class:`StatsEvidence` adapts the canary-stats read API to the :class:`Evidence`
protocol of :mod:`consumers.rollback.guards`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rollout_engine.consumers.aggregates import WindowAggregates
from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.rollback.guards import EMPTY, GuardPlan, GuardResult, Summary, crosses
from rollout_engine.consumers.rollback.policy import Policy
from rollout_engine.consumers.rollback.proof import kill_evidence
from rollout_engine.consumers.sketches import Histogram
from rollout_engine.consumers.windows import Series, quantile
from rollout_engine.events import KillEvidence

__all__ = ["SMALL_TIME_CAP", "EpochSummary", "StatsEvidence", "new_stats", "serves", "sketched", "stats_shape"]


SMALL_TIME_CAP = 8
"""Time-window entries kept when no guard reads the ``time`` window (CanaryStats' minimum).

The time window's lists are the largest part of a canary-stats snapshot (up to 5,000
entries per series); a rollout whose guards all read ``last_n`` does not pay for them."""


def stats_shape(policy: Policy) -> tuple[int, int, int, int]:
    """``(last_n, window_ms, time_cap, sketched)`` of the evidence ``policy`` reads.

    Each policy of a rollout is judged on windows of its own sizes: a dry-run policy
    whose shape differs from the live one's folds its own canary stats. ``sketched`` is
    1 when a guard reads a percentile of the ``all`` window or runs the rank test (both
    read the sketch of every sample); otherwise the fold keeps no sketch, which is 13%
    of the rollback fold on the bench workload (bench/NOTES.md)."""
    guards = policy.all_guards()
    timed = any(g.window == "time" for g in guards)
    needs_sketch = any(g.test == "mann_whitney" or (g.window == "all" and g.aggregate not in ("mean", "rate"))
                       for g in guards)
    return policy.last_n, policy.window_ms, 5000 if timed else SMALL_TIME_CAP, int(needs_sketch)


def sketched(shape: Sequence[int]) -> bool:
    """Whether a fold of ``shape`` sketches every sample (a shape stored before the flag
    existed has three numbers, and its fold was always sketched)."""
    return len(shape) < 4 or bool(shape[3])


def serves(fold: Sequence[int], policy_shape: Sequence[int]) -> bool:
    """Whether a fold of shape ``fold`` holds the evidence a policy of ``policy_shape``
    reads: the same windows, and a sketch if the policy reads one. A sketched fold serves
    a policy that reads no sketch, so a policy change never restarts the evidence only
    because the new policy needs less of it."""
    return list(fold[:3]) == list(policy_shape[:3]) and (sketched(fold) or not sketched(policy_shape))


def new_stats(shape: Sequence[int]) -> CanaryStats:
    """A fresh canary-stats fold of the given shape (:func:`stats_shape`), of the series
    alone: guards read metric and quality series, never the split or the verdicts."""
    last_n, window_ms, time_cap = shape[:3]
    return CanaryStats(last_n=last_n, window_ms=window_ms, time_cap=time_cap, sketch=sketched(shape), series_only=True)


class StatsEvidence:
    """One evaluation's view of one rollout's evidence.

    Reads raw window values through ``CanaryStats.samples`` (sub-microsecond) and
    aggregates only what a guard asks for, with canary stats' own ``mean_var`` and
    ``quantile``, so the numbers match the dashboards'. The ``all`` window and the
    statistical tests read the series of every sample of the epoch directly
    (``CanaryStats.series``): count, Welford mean and variance, the sketch's quantiles
    and its histogram, never a full ``view()`` (~60 us, every metric and percentile).
    """

    __slots__ = ("_rollout", "_stats")

    def __init__(self, stats: Any, rollout: str) -> None:
        self._stats = stats
        self._rollout = rollout

    def summary(self, variant: str, metric: str, window: str) -> Summary:
        if window == "all":
            return self.epoch(variant, metric)
        stats = self._stats
        series = stats.series(self._rollout, variant, metric)
        if series is None or not series.values:
            return EMPTY
        if window == "last_n":
            agg = series.aggregates(stats.last_n)
            if agg is not None:  # kept current by the fold: O(1) reads (consumers/aggregates.py)
                return LastNSummary(agg)
        elif window == "time":
            agg = series.aggregates(stats.last_n)
            cutoff = stats.cutoff(self._rollout)
            if agg is not None and agg.time_key == (series.n, cutoff):
                return agg.time_cached  # type: ignore[no-any-return]  # nothing moved since the last read
            values = series.window_values(window, cutoff, stats.last_n)
            summary = LazySummary(values) if values else EMPTY
            if agg is not None:
                agg.time_key, agg.time_cached = (series.n, cutoff), summary
            return summary
        values = stats.samples(self._rollout, variant, metric, window)
        return LazySummary(values) if values else EMPTY

    def passes(self, plan: GuardPlan, variants: tuple[str, str], penalized: bool) -> bool:
        """True when ``evaluate_guard`` would find a plain ``pass`` (no test), computed
        without building its summaries or its result; False means "take the full path".

        The rollback fold judges a guard on every sample of its metric and nearly all of
        those judgements pass: this screen reads the same incremental aggregates
        (:class:`LastNSummary`), in the same order and with the same arithmetic
        (threshold, penalty, ``b or 0.0``, recovery offset), so a True here is exactly
        the ``pass`` the full path would return. Only ``last_n`` guards are screened."""
        if not plan.last_n:
            return False
        threshold = plan.threshold + (plan.penalty if penalized else 0.0)
        metric = plan.guard.metric
        stats, rollout = self._stats, self._rollout
        series = stats.series(rollout, variants[1], metric)
        if series is None or not series.values:
            return False
        agg = series.aggregates(stats.last_n)
        if agg is None or len(agg.ordered) < plan.need:
            return False
        q = plan.q
        c = agg.mean() if q is None else quantile(agg.ordered, q)
        if c != c:  # NaN: the full path falls back to numpy
            return False
        mode = plan.mode
        if plan.relative:
            series = stats.series(rollout, variants[0], metric)
            if series is None or not series.values:
                return False
            agg = series.aggregates(stats.last_n)
            if agg is None or len(agg.ordered) < plan.need_b:
                return False
            b = agg.mean() if q is None else quantile(agg.ordered, q)
            if b != b:
                return False
            b = b or 0.0
            if mode == "increase":
                observed = c - b
            elif mode == "decrease":
                observed = b - c
            elif b == 0:
                return False
            else:
                observed = c / b
        else:
            observed = c
        if observed - observed != 0.0:  # not finite: inconclusive
            return False
        comparator = plan.comparator
        if crosses(observed, threshold, comparator):
            return False
        recovery = plan.recovery
        return recovery is None or not crosses(observed, recovery + (threshold - plan.threshold), comparator)

    def epoch(self, variant: str, metric: str) -> Summary:
        """Every sample since the evidence epoch began: what the statistical tests read."""
        series = self._stats.series(self._rollout, variant, metric)
        if series is None or series.n == 0:
            return EMPTY
        return EpochSummary(series)

    def histogram(self, variant: str, metric: str) -> Histogram:
        """Every sample of the epoch, binned at the sketch's accuracy (for the rank test)."""
        series = self._stats.series(self._rollout, variant, metric)
        return [] if series is None else series.histogram()

    def samples(self, variant: str, metric: str, window: str) -> Sequence[float]:
        return self._stats.samples(self._rollout, variant, metric, window)

    def proof(self, failing: Sequence[GuardResult], variants: tuple[str, str]) -> list[KillEvidence]:
        """The events a kill by ``failing`` judged (``consumers/rollback/proof.py``)."""
        return kill_evidence(self._stats, self._rollout, failing, variants)


class EpochSummary(Summary):
    """A :class:`Summary` of every sample of a series: count, mean and variance at once
    (Welford, O(1)), percentiles on first use (the sketch's, or exact while few)."""

    __slots__ = ("_series",)

    def __init__(self, series: Series) -> None:
        var = series.variance()
        super().__init__(series.n, series.mean, math.nan if var is None else var)
        self._series = series

    def get(self, aggregate: str) -> float:
        if aggregate in ("mean", "rate"):
            return self.mean
        value = self._series.all_quantile(float(aggregate[1:]) / 100.0)
        return math.nan if value is None else value


class LastNSummary(Summary):
    """A :class:`Summary` of a last-N window read from its incremental aggregates: the
    count at once, the mean and percentiles on first use, each the same float that
    :class:`LazySummary` computes from the raw values (exact sum, the same sorted list)."""

    __slots__ = ("_agg",)

    def __init__(self, agg: WindowAggregates) -> None:  # no super().__init__: lazy fields
        self.n = len(agg.ordered)
        self.var = self.p50 = self.p95 = self.p99 = math.nan
        self._agg = agg

    @property  # type: ignore[override]
    def mean(self) -> float:
        return self._agg.mean()

    def get(self, aggregate: str) -> float:
        if aggregate in ("mean", "rate"):
            return self._agg.mean()
        return quantile(self._agg.ordered, float(aggregate[1:]) / 100.0)


class LazySummary(Summary):
    """A :class:`Summary` over raw values that computes only what a guard reads: the
    count at once, the mean on first use (one ``fsum``), percentiles on first use (one
    sort); the variance is left to the sequential test that needs it."""

    __slots__ = ("_mean", "_ordered", "_values")

    def __init__(self, values: Sequence[float]) -> None:  # no super().__init__: lazy fields
        self.n = len(values)
        self.var = self.p50 = self.p95 = self.p99 = math.nan
        self._values = values
        self._mean: float | None = None
        self._ordered: list[float] | None = None

    @property  # type: ignore[override]
    def mean(self) -> float:
        if self._mean is None:
            self._mean = math.fsum(self._values) / self.n
        return self._mean

    def get(self, aggregate: str) -> float:
        if aggregate in ("mean", "rate"):
            return self.mean
        if self._ordered is None:
            self._ordered = sorted(self._values)
        return quantile(self._ordered, float(aggregate[1:]) / 100.0)
