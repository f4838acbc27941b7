"""The incremental window aggregates (consumers/aggregates.py) against brute force.

Random series through the real canary-stats fold; after every sample the last-N mean,
percentiles and the time window read through the rollback's evidence must be the very
floats that recomputing from the raw values gives (``math.fsum`` / n, ``sorted``), and a
guard judged on them must give the same result, at the boundaries too: a sample exactly
at the cut-off, a value equal to the threshold, one sample short of the minimum."""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.aggregates import WindowAggregates
from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.rollback.evidence import LazySummary, StatsEvidence
from rollout_engine.consumers.rollback.guards import EMPTY, evaluate_guard
from rollout_engine.consumers.rollback.policy import Guard, Policy
from rollout_engine.consumers.windows import Series, quantile
from rollout_engine.events import Metric, Tick

T0 = 1_700_000_000_000
THRESHOLD = 10.0
values = st.one_of(
    st.sampled_from([THRESHOLD, -0.0, 0.0, 1e-300, 5e-324, 1e12, -1e12, 9.999999999999998, 10.000000000000002]),
    st.floats(-1e12, 1e12, allow_nan=False),
    st.integers(-20, 40).map(float),
)


def _bits(xs: list[float]) -> list[bytes]:
    return [struct.pack("<d", x) for x in xs]  # tells -0.0 from 0.0


class BruteEvidence(StatsEvidence):
    """The evidence as before the aggregates: every window recomputed from raw values."""

    def __init__(self, stats: CanaryStats, rollout: str, samples: dict[str, list[tuple[int, float]]]) -> None:
        super().__init__(stats, rollout)
        self.raw = samples

    def summary(self, variant: str, metric: str, window: str) -> object:  # type: ignore[override]
        if window == "all":
            return self.epoch(variant, metric)
        pushed = self.raw.get(variant, [])
        if window == "last_n":
            window_values = [v for _, v in pushed[-self._stats.last_n:]]
        else:
            cutoff = self._stats.cutoff(self._rollout)
            window_values = [v for t, v in pushed if t > cutoff]
        return LazySummary(window_values) if window_values else EMPTY


GUARDS = [
    Guard(name="mean", metric="m", threshold=THRESHOLD),
    Guard(name="ge", metric="m", threshold=THRESHOLD, comparator="ge"),
    Guard(name="p95", metric="m", aggregate="p95", threshold=THRESHOLD),
    Guard(name="p50t", metric="m", aggregate="p50", window="time", threshold=THRESHOLD),
    Guard(name="meant", metric="m", window="time", threshold=THRESHOLD, min_samples=3),
    Guard(name="drop", metric="m", mode="decrease", threshold=0.0, min_samples=3, min_baseline_samples=2),
    Guard(name="ratio99", metric="m", mode="ratio", aggregate="p99", window="time", threshold=1.0),
    Guard(name="all95", metric="m", aggregate="p95", window="all", threshold=THRESHOLD),
]
POLICY = Policy(min_samples=3, min_baseline_samples=2)

samples = st.lists(st.tuples(st.sampled_from(["baseline", "candidate"]), values,
                             st.integers(-300, 400), st.booleans()), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(samples=samples, last_n=st.integers(1, 12), window_ms=st.integers(1, 500))
def test_evidence_and_guards_match_brute_force(samples, last_n, window_ms) -> None:
    stats = CanaryStats(last_n=last_n, window_ms=window_ms, time_cap=1_000)
    raw: dict[str, list[tuple[int, float]]] = {}
    now = T0
    for seq, (variant, value, step, tick) in enumerate(samples, 1):
        now += abs(step) % 50
        t = now + min(step, 0)  # some event times behind the latest: out of order
        if tick:
            stats.apply(Tick(id=f"tick-{seq}", time_ms=now + step % 7, producer="engine"), seq)
        stats.apply(Metric(id=f"{t:012x}{seq:016x}", rollout="r", time_ms=t, producer="p", variant=variant,
                           name="m", value=value), seq)
        raw.setdefault(variant, []).append((t, value))
        fast, brute = StatsEvidence(stats, "r"), BruteEvidence(stats, "r", raw)
        for window in ("last_n", "time"):
            for v in ("baseline", "candidate"):
                a, b = fast.summary(v, "m", window), brute.summary(v, "m", window)
                assert a.n == b.n
                if b.n:
                    assert _bits([a.get("mean"), a.get("p50"), a.get("p95"), a.get("p99")]) == \
                        _bits([b.get("mean"), b.get("p50"), b.get("p95"), b.get("p99")])
        for guard in GUARDS:
            assert evaluate_guard(guard, POLICY, fast, ("baseline", "candidate")) == \
                evaluate_guard(guard, POLICY, brute, ("baseline", "candidate")), guard.name


@settings(max_examples=200, deadline=None)
@given(pushes=st.lists(values, min_size=1, max_size=80), last_n=st.integers(1, 20), cap=st.integers(0, 30),
       restore_at=st.integers(0, 80))
def test_last_n_aggregates_are_exact_through_eviction_and_restore(pushes, last_n, cap, restore_at) -> None:
    series = Series()
    for i, value in enumerate(pushes):
        if i == restore_at:  # a restored series rebuilds its aggregates from the buffer
            series = Series.from_state(series.state())
        series.push(value, T0 + i, T0 + i - 5, last_n, last_n + cap)  # time and last-N both evict
        window = series.values[-last_n:].tolist()
        agg = series.aggregates(last_n)
        assert agg is not None
        assert _bits(agg.ordered) == _bits(sorted(window))
        assert agg.mean() == math.fsum(window) / len(window)
        for q in (0.5, 0.95, 0.99):
            assert quantile(agg.ordered, q) == quantile(sorted(window), q)
        if series.sketch is None:
            assert series.all_quantile(0.95) == quantile(sorted(series.values), 0.95)


def test_a_non_finite_value_turns_the_aggregates_off() -> None:
    """The schema bounds values to |x| <= 1e12; a series fed one anyway is read by recomputing."""
    series = Series()
    for i, value in enumerate([1.0, 2.0]):
        series.push(value, T0 + i, 0, 4, 4)
    assert series.aggregates(4) is not None
    series.push(math.nan, T0 + 2, 0, 4, 4)
    assert series.agg is None and series.aggregates(4) is None


def test_the_exact_sum_is_the_correctly_rounded_sum() -> None:
    values_ = [1e12, 0.1, -1e12, 5e-324]
    agg = WindowAggregates(__import__("array").array("d", values_), len(values_))
    assert agg.mean() == math.fsum(values_) / len(values_)
    assert agg.mean() != sum(values_) / len(values_)  # the naive float sum drifts here
