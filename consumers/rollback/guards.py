"""Guard evaluation: from evidence to pass / hold / fail / inconclusive, with the numbers.

A guard reads a :class:`Summary` of the candidate (and, for relative modes, the
baseline) from an :class:`Evidence` source, computes ``observed``, compares it with
its threshold, and -- only when the threshold is crossed -- runs its statistical
check, so the expensive part costs nothing on healthy traffic. Too little data or a
crossing that is not significant is *inconclusive*, never a failure.

Every result can be rendered as a :class:`events.Breach` and as one line of the kill
switch's reason, in the format operators read in the runbook::

    quality (baseline: 95.0, candidate: 82.0, drop: 13.0)
    latency (candidate p95: 1850ms > 1600ms)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy

from rollout_engine.consumers.rollback.hysteresis import Status
from rollout_engine.consumers.rollback.policy import Guard, Policy, SrmConfig
from rollout_engine.consumers.rollback.stats_tests import (
    INCONCLUSIVE,
    TestResult,
    sequential_rank_test,
    sequential_test,
    srm_clearly_fits,
    srm_log_bayes_factor,
    srm_test,
    welch_df,
)
from rollout_engine.events import Breach

__all__ = ["Evidence", "GuardIndex", "GuardPlan", "GuardResult", "Summary", "crosses", "evaluate_guard", "evaluate_srm", "harm_sign"]

_BOUND = 1e12


class Summary:
    """Aggregates of one variant's samples of one metric in one window (NaN: unknown)."""

    __slots__ = ("mean", "n", "p50", "p95", "p99", "var")

    def __init__(self, n: int, mean: float = math.nan, var: float = math.nan, p50: float = math.nan,
                 p95: float = math.nan, p99: float = math.nan) -> None:
        self.n, self.mean, self.var, self.p50, self.p95, self.p99 = n, mean, var, p50, p95, p99

    def get(self, aggregate: str) -> float:
        return self.mean if aggregate in ("mean", "rate") else float(getattr(self, aggregate))


EMPTY = Summary(0)


class Evidence(Protocol):
    """Where guards read their numbers (the rollback consumer's own canary-stats fold)."""

    def summary(self, variant: str, metric: str, window: str) -> Summary:
        """The guard's window: what its threshold is compared with."""
        ...

    def samples(self, variant: str, metric: str, window: str) -> Sequence[float]: ...

    def epoch(self, variant: str, metric: str) -> Summary:
        """Count, mean and variance of every sample of the evidence epoch (the tests' input)."""
        ...

    def histogram(self, variant: str, metric: str) -> Sequence[tuple[float, float]]:
        """Every sample of the epoch as a sorted ``(bin, count)`` tally (the rank test's input)."""
        ...


@dataclass(slots=True)
class GuardResult:
    """One evaluation of one guard."""

    guard: Guard
    status: Status
    observed: float | None = None
    threshold: float = 0.0
    candidate: float | None = None
    baseline: float | None = None
    candidate_n: int = 0
    baseline_n: int = 0
    test: TestResult | None = None
    why: str = ""
    kind: str = "threshold"
    need: int = 0  # > 0: short of its minimum sample, ``have`` of ``need`` (inconclusive)
    have: int = 0

    @property
    def insufficient(self) -> str:
        """``latency 12/30`` for a guard short of its minimum sample, else ``""``."""
        return f"{self.guard.name} {self.have}/{self.need}" if self.need else ""

    def describe(self) -> str:
        """The one-line explanation of this result (the kill switch's reason joins them)."""
        g = self.guard
        if self.kind == "srm":
            return (f"srm (candidate share: {self.observed:.1f}% vs configured {self.threshold:.1f}%, "
                    f"n={self.candidate_n}/{self.baseline_n}, p={_p(self.test)})")
        label = "" if g.aggregate == "mean" else f" {g.aggregate}"
        obs, thr = _fmt(self.observed, g.unit), _fmt(self.threshold, g.unit)
        op = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[g.comparator]
        if g.mode == "decrease":
            text = (f"{g.name} (baseline{label}: {_fmt(self.baseline, g.unit)}, candidate{label}: "
                    f"{_fmt(self.candidate, g.unit)}, drop: {obs})")
        elif g.mode == "increase":
            text = (f"{g.name} (baseline{label}: {_fmt(self.baseline, g.unit)}, candidate{label}: "
                    f"{_fmt(self.candidate, g.unit)}, rise: {obs} {op} {thr})")
        elif g.mode == "ratio":
            text = f"{g.name} (candidate{label} / baseline{label}: {self.observed:.2f} {op} {self.threshold:g})"
        else:
            text = f"{g.name} (candidate{label}: {obs} {op} {thr})"
        if self.test is not None and self.test.p_value is not None:
            text = text[:-1] + f", {g.test} p={_p(self.test)})"
        return text

    def breach(self) -> Breach:
        """The structured record carried by a KillSwitch / WouldKill."""
        test = self.test
        return Breach(
            guard=self.guard.name,
            type=self.kind if self.kind == "srm" else (self.guard.test if self.guard.test != "none" else "threshold"),
            observed=_clamp(self.observed),
            threshold=_clamp(self.threshold),
            baseline=None if self.baseline is None else _clamp(self.baseline),
            candidate_n=self.candidate_n,
            baseline_n=self.baseline_n,
            statistic=None if test is None or test.statistic is None else _clamp(test.statistic),
            p_value=None if test is None or test.p_value is None else min(1.0, max(0.0, test.p_value)),
            window=self.guard.window,
            detail=self.describe()[:1024],
        )


def _clamp(x: float | None) -> float:
    if x is None or math.isnan(x):
        return 0.0
    return max(-_BOUND, min(_BOUND, x))


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f}{unit}" if unit == "ms" else f"{x:.1f}{unit}"


def _p(test: TestResult | None) -> str:
    return "n/a" if test is None or test.p_value is None else f"{test.p_value:.3g}"


def harm_sign(guard: Guard) -> float:
    """+1 when a larger ``observed`` is worse (gt/ge), -1 when a smaller one is (lt/le)."""
    return 1.0 if guard.comparator in ("gt", "ge") else -1.0


def crosses(value: float, threshold: float, comparator: str) -> bool:
    """Whether ``value`` is past ``threshold`` by ``comparator`` (gt, ge, lt or le)."""
    if comparator == "gt":
        return value > threshold
    if comparator == "ge":
        return value >= threshold
    if comparator == "lt":
        return value < threshold
    return value <= threshold


def _observed(guard: Guard, cand: float, base: float) -> float | None:
    if guard.mode == "absolute":
        return cand
    if guard.mode == "increase":
        return cand - base
    if guard.mode == "decrease":
        return base - cand
    return None if base == 0 else cand / base


def _aggregate(ev: Evidence, variant: str, guard: Guard, summary: Summary) -> float:
    value = summary.get(guard.aggregate)
    if math.isnan(value) and guard.aggregate in ("p50", "p95", "p99"):
        values = ev.samples(variant, guard.metric, guard.window)
        if values:
            return float(numpy.percentile(values, float(guard.aggregate[1:])))
    return value


def _run_test(guard: Guard, policy: Policy, ev: Evidence, variants: tuple[str, str]) -> TestResult:
    """The guard's statistical check on EVERY sample of the evidence epoch.

    Whatever window the threshold reads, the test reads the epoch's whole sample: the
    always-valid guarantee holds for one growing sample, not for a sliding window
    (each look at a window of the last N is a new sample, and their false alarms add
    up), and the whole sample is what gives the test its power.
    """
    sign = harm_sign(guard)
    n_star = policy.sequential_n
    if guard.test == "sequential":
        cand = ev.epoch(variants[1], guard.metric)
        if cand.n < 2:
            return INCONCLUSIVE
        if guard.mode == "absolute":
            estimate = sign * (cand.mean - guard.threshold)
            return sequential_test(estimate, cand.var / cand.n, cand.n, alpha=guard.alpha, n_star=n_star,
                                   df=cand.n - 1)
        base = ev.epoch(variants[0], guard.metric)
        if base.n < 2:
            return INCONCLUSIVE
        diff = cand.mean - base.mean if guard.mode != "decrease" else base.mean - cand.mean
        variance = cand.var / cand.n + base.var / base.n
        return sequential_test(sign * diff, variance, cand.n + base.n, alpha=guard.alpha, n_star=n_star,
                               df=welch_df(cand.var, cand.n, base.var, base.n))
    # Mann-Whitney: is the candidate's distribution shifted towards harm?
    higher_is_worse = (guard.mode != "decrease") == (sign > 0)
    return sequential_rank_test(ev.histogram(variants[1], guard.metric), ev.histogram(variants[0], guard.metric),
                                "greater" if higher_is_worse else "less", alpha=guard.alpha, n_star=n_star)


def evaluate_guard(
    guard: Guard,
    policy: Policy,
    ev: Evidence,
    variants: tuple[str, str],
    *,
    penalized: bool = False,
    cached: TestResult | None = None,
) -> GuardResult:
    """Evaluate one guard; ``variants`` is ``(baseline, candidate)``.

    ``cached`` is a test result the caller kept from an earlier evaluation (tests are
    re-run at most once per check interval); ``penalized`` raises the threshold by the
    guard's flap penalty.
    """
    threshold = guard.threshold + (harm_sign(guard) * guard.penalty_threshold_add if penalized else 0.0)
    cand = ev.summary(variants[1], guard.metric, guard.window)
    need = guard.min_samples or policy.min_samples
    if cand.n < need:
        return GuardResult(guard, "inconclusive", threshold=threshold, candidate_n=cand.n,
                           why=f"{cand.n} candidate samples < {need}", need=need, have=cand.n)
    base = EMPTY
    relative = guard.relative  # a property: read once
    if relative:
        base = ev.summary(variants[0], guard.metric, guard.window)
        need_b = guard.min_baseline_samples or policy.min_baseline_samples
        if base.n < need_b:
            return GuardResult(guard, "inconclusive", threshold=threshold, candidate_n=cand.n, baseline_n=base.n,
                               why=f"{base.n} baseline samples < {need_b}", need=need_b, have=base.n)
    c_value = _aggregate(ev, variants[1], guard, cand)
    b_value = _aggregate(ev, variants[0], guard, base) if relative else None
    observed = _observed(guard, c_value, b_value or 0.0)
    if observed is None or not math.isfinite(observed):
        return GuardResult(guard, "inconclusive", None, threshold, c_value, b_value, cand.n, base.n,
                           why="baseline aggregate is 0")
    if not crosses(observed, threshold, guard.comparator):
        recovered = guard.recovery_threshold is None or not crosses(
            observed, guard.recovery_threshold + (threshold - guard.threshold), guard.comparator)
        return GuardResult(guard, "pass" if recovered else "hold", observed, threshold, c_value, b_value,
                           cand.n, base.n)
    if guard.test == "none":
        return GuardResult(guard, "fail", observed, threshold, c_value, b_value, cand.n, base.n)
    common = {"threshold": threshold, "candidate": c_value, "baseline": b_value,
              "candidate_n": cand.n, "baseline_n": base.n}
    test = cached if cached is not None else _run_test(guard, policy, ev, variants)
    if not test.significant(guard.alpha):
        return GuardResult(guard, "inconclusive", observed=observed, test=test, why="not significant", **common)
    if guard.test == "mann_whitney" and (test.effect or 0.0) < guard.min_effect:
        return GuardResult(guard, "inconclusive", observed=observed, test=test,
                           why=f"effect size {test.effect:.2f} < {guard.min_effect}", **common)
    return GuardResult(guard, "fail", observed=observed, test=test, **common)


class GuardPlan:
    """One guard of one policy with what every judgement of it re-derived, worked out once:
    its minimum samples, whether it is relative, the quantile it reads (None: the mean),
    its flap penalty as a signed offset. Read by the rollback fold's pass screen
    (``evidence.StatsEvidence.passes``)."""

    __slots__ = ("comparator", "guard", "last_n", "mode", "name", "need", "need_b", "penalty", "q", "recovery",
                 "relative", "threshold")

    def __init__(self, guard: Guard, policy: Policy) -> None:
        self.guard, self.name, self.threshold = guard, guard.name, guard.threshold
        self.need = guard.min_samples or policy.min_samples
        self.need_b = guard.min_baseline_samples or policy.min_baseline_samples
        self.relative = guard.relative
        self.q = None if guard.aggregate in ("mean", "rate") else float(guard.aggregate[1:]) / 100.0
        self.penalty = harm_sign(guard) * guard.penalty_threshold_add
        self.recovery, self.comparator, self.mode = guard.recovery_threshold, guard.comparator, guard.mode
        self.last_n = guard.window == "last_n"  # the only window the screen reads; others take the full path


class GuardIndex:
    """Which guards of a policy a sample can move, cached per policy object.

    A sample of metric M re-judges only the guards on M (a baseline sample only the
    relative ones); ``plans(policy, None, False)`` is every guard, in policy order. At
    most ``limit`` policies are kept (a long-running consumer sees a new policy object
    per policy change); past it the cache starts again. Looked up once or twice per
    sample, in one call: keyed by the policy's id, then by metric, so no key tuple is
    made per lookup."""

    __slots__ = ("_cache", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._cache: dict[int, tuple[Policy, dict[str | None, list[GuardPlan]], dict[str | None, list[GuardPlan]]]] = {}
        self.limit = limit

    def plans(self, policy: Policy, metric: str | None, relative_only: bool) -> list[GuardPlan]:
        """The guards of ``policy`` on ``metric`` (None: all), relative ones only if asked,
        as :class:`GuardPlan` objects in policy order."""
        per = self._cache.get(id(policy))
        if per is None or per[0] is not policy:
            if len(self._cache) >= self.limit:
                self._cache.clear()
            per = self._cache[id(policy)] = (policy, {}, {})
        by_metric = per[2] if relative_only else per[1]
        found = by_metric.get(metric)
        if found is None:
            found = by_metric[metric] = [GuardPlan(g, policy) for g in policy.all_guards()
                                         if (metric is None or g.metric == metric) and (not relative_only or g.relative)]
        return found

    def on(self, policy: Policy, metric: str | None, relative_only: bool) -> list[Guard]:
        """:meth:`plans` as the guards themselves (a new list: read off the hot path)."""
        return [plan.guard for plan in self.plans(policy, metric, relative_only)]


SRM_GUARD = Guard(name="srm", metric="decisions", threshold=0.0, unit="%")


def evaluate_srm(cfg: SrmConfig, baseline_n: int, candidate_n: int, canary_pct: float,
                 screen: bool = False) -> GuardResult:
    """Sample-ratio mismatch of the decisions made at ``canary_pct``: its own breach type.

    ``screen``: a caller that reads only the status (the hysteresis step) takes a clear
    pass without its p-value (``test`` None); the status is the same either way."""
    total = baseline_n + candidate_n
    share = 100.0 * candidate_n / total if total else 0.0
    common = {"observed": share, "threshold": canary_pct, "candidate_n": candidate_n,
              "baseline_n": baseline_n, "kind": "srm"}
    if total < cfg.min_decisions:
        return GuardResult(SRM_GUARD, "inconclusive", why=f"{total} decisions < {cfg.min_decisions}",
                           need=cfg.min_decisions, have=total, **common)
    if screen and srm_clearly_fits(baseline_n, candidate_n, canary_pct, cfg.p_value):
        return GuardResult(SRM_GUARD, "pass", **common)
    test = srm_test(baseline_n, candidate_n, canary_pct)
    if test.p_value is None:
        return GuardResult(SRM_GUARD, "inconclusive", test=test, why="expected counts under 5", **common)
    if test.p_value >= cfg.p_value:
        return GuardResult(SRM_GUARD, "pass", test=test, **common)
    if cfg.sequential and srm_log_bayes_factor(baseline_n, candidate_n, canary_pct) < -math.log(cfg.p_value):
        # chi-squared says mismatch, but looking after every decision inflates its false
        # alarms; the always-valid Bayes factor has not confirmed it yet
        return GuardResult(SRM_GUARD, "inconclusive", test=test, why="not yet confirmed sequentially", **common)
    return GuardResult(SRM_GUARD, "fail", test=test, **common)
