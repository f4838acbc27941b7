"""Canary stats: the pure reducer, no I/O (windows, fields, snapshots, determinism)."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.events import Decision, Metric, Outcome, ShadowResult, Tick

T0 = 1_700_000_000_000
_n = iter(range(10**9))


def _id() -> str:
    return f"e{next(_n)}"


def decision(variant: str, t: int = T0, diff: dict[str, bool] | None = None, rollout: str = "r1") -> Decision:
    shadow = None if diff is None else ShadowResult(variant="other", diff=diff)
    return Decision(id=_id(), rollout=rollout, time_ms=t, producer="p", unit="u", variant=variant,
                    reason="canary", canary_pct=10.0, config_version=1, propensity=0.1, shadow=shadow)


def outcome(variant: str, verdict: str = "win", quality: float | None = None, t: int = T0, rollout: str = "r1") -> Outcome:
    return Outcome(id=_id(), rollout=rollout, time_ms=t, producer="p", decision_id="d", variant=variant,
                   verdict=verdict, quality=quality)  # type: ignore[arg-type]


def metric(variant: str, name: str, value: float, t: int = T0, rollout: str = "r1") -> Metric:
    return Metric(id=_id(), rollout=rollout, time_ms=t, producer="p", variant=variant, name=name, value=value)


def tick(t: int) -> Tick:
    return Tick(id=f"tick-{t}", time_ms=t, producer="engine")


def fold(stats: CanaryStats, events: list) -> CanaryStats:
    for seq, event in enumerate(events, 1):
        stats.apply(event, seq)
    return stats


def test_split_counts_last_n_decisions_of_the_rollout_and_all_time() -> None:
    stats = CanaryStats(last_n=10)
    fold(stats, [decision("baseline") for _ in range(20)] + [decision("candidate") for _ in range(4)])
    assert stats.split("r1", "all") == {"baseline": 20, "candidate": 4}
    assert stats.split("r1", "last_n") == {"baseline": 6, "candidate": 4}
    assert stats.view("r1", "last_n")["candidate"].decisions == 4
    assert sorted(stats.rollouts) == ["r1"]


def test_shadow_diff_rate_per_dimension() -> None:
    stats = fold(CanaryStats(), [
        decision("candidate", diff={"agent": True, "steps": False}),
        decision("candidate", diff={"agent": False, "steps": False}),
        decision("candidate", diff={"agent": True, "tools": True}),
        decision("candidate"),
    ])
    for window in ("last_n", "time", "all"):
        view = stats.view("r1", window)["candidate"]
        assert view.diff_rate == {"agent": pytest.approx(2 / 3), "steps": 0.0, "tools": 1.0}, window
        assert view.shadowed == 3 and view.decisions == 4


def test_outcomes_by_verdict_and_quality_mean_variance() -> None:
    qualities = [95.0, 85.0, 90.0, 70.0, 99.5]
    verdicts = ["win", "loss", "win", "inconclusive", "neutral"]
    stats = fold(CanaryStats(), [outcome("candidate", v, q) for v, q in zip(verdicts, qualities, strict=True)]
                 + [outcome("candidate", "loss")])
    for window in ("last_n", "time", "all"):
        view = stats.view("r1", window)["candidate"]
        assert view.outcomes == 6
        assert view.verdicts == {"win": 2, "loss": 2, "neutral": 1, "inconclusive": 1}
        assert view.quality_n == 5
        assert view.quality_mean == pytest.approx(statistics.mean(qualities))
        assert view.quality_var == pytest.approx(statistics.variance(qualities))
    assert stats.samples("r1", "candidate", "quality", "last_n") == qualities


def test_metric_quantiles_exact_in_bounded_windows_and_within_sketch_accuracy_for_all() -> None:
    values = [float(v) for v in range(1, 1001)]
    stats = fold(CanaryStats(last_n=100), [metric("candidate", "latency_ms", v) for v in values])
    last = stats.view("r1", "last_n")["candidate"].metrics["latency_ms"]
    assert (last.n, last.mean) == (100, pytest.approx(950.5))
    assert last.p50 == pytest.approx(950.5) and last.p99 == pytest.approx(999.01)
    everything = stats.view("r1", "all")["candidate"].metrics["latency_ms"]
    assert everything.n == 1000 and everything.mean == pytest.approx(500.5)
    for got, want in ((everything.p50, 500), (everything.p95, 950), (everything.p99, 990)):
        assert abs(got - want) / want < 0.02
    assert stats.samples("r1", "candidate", "latency_ms", "last_n") == values[-100:]


def test_error_rate_and_cost_mean() -> None:
    stats = fold(CanaryStats(), [metric("candidate", "error", float(i % 4 == 0)) for i in range(8)]
                 + [metric("candidate", "cost_cents", c) for c in (2.0, 4.0)])
    view = stats.view("r1", "all")["candidate"]
    assert view.error_rate == pytest.approx(0.25)
    assert view.cost_mean == pytest.approx(3.0)


def test_time_window_moves_on_event_time_and_ticks_never_the_wall_clock() -> None:
    stats = CanaryStats(window_ms=60_000)
    fold(stats, [metric("candidate", "latency_ms", 100.0, T0), decision("candidate", T0),
                 outcome("candidate", "loss", 50.0, T0)])
    assert stats.view("r1", "time")["candidate"].metrics["latency_ms"].n == 1
    stats.apply(metric("candidate", "latency_ms", 200.0, T0 + 30_000), 4)
    assert stats.samples("r1", "candidate", "latency_ms", "time") == [100.0, 200.0]
    stats.apply(tick(T0 + 60_000), 5)  # first sample is now exactly window_ms old: out
    assert stats.now_ms("r1") == T0 + 60_000
    assert stats.samples("r1", "candidate", "latency_ms", "time") == [200.0]
    assert stats.split("r1", "time") == {"candidate": 0}
    assert stats.view("r1", "time")["candidate"].outcomes == 0
    stats.apply(tick(T0 + 200_000), 6)
    view = stats.view("r1", "time")["candidate"]
    assert view.metrics == {} and view.quality_n == 0
    assert stats.view("r1", "last_n")["candidate"].metrics["latency_ms"].n == 2
    # a late event older than the window counts in last_n and all, not in time
    stats.apply(metric("candidate", "latency_ms", 300.0, T0), 7)
    assert stats.samples("r1", "candidate", "latency_ms", "time") == []
    assert stats.view("r1", "all")["candidate"].metrics["latency_ms"].n == 3


def test_time_window_is_capped_for_memory() -> None:
    stats = fold(CanaryStats(last_n=10, time_cap=64), [metric("b", "x", float(i), T0 + i) for i in range(1000)])
    kept = stats.samples("r1", "b", "x", "time")
    assert 56 <= len(kept) <= 64 and kept[-1] == 999.0


def test_unknown_rollout_and_window() -> None:
    stats = CanaryStats()
    assert stats.view("nope", "all") == {} and stats.samples("nope", "b", "x", "time") == []
    with pytest.raises(ValueError, match="unknown window"):
        stats.view("nope", "week")


def _workload(n: int, seed: int = 1) -> list:
    import random

    rng = random.Random(seed)
    events: list = []
    for i in range(n):
        t = T0 + i * 50 + rng.randrange(-500, 500)
        variant = rng.choice(("baseline", "candidate"))
        rollout = rng.choice(("r1", "r2", "r3"))
        kind = rng.randrange(5)
        if kind == 0:
            events.append(decision(variant, t, {"agent": rng.random() < 0.3} if rng.random() < 0.5 else None, rollout))
        elif kind == 1:
            events.append(outcome(variant, rng.choice(("win", "loss", "neutral", "inconclusive")),
                                  rng.gauss(90, 5) if rng.random() < 0.8 else None, t, rollout))
        elif kind == 2:
            events.append(tick(t - t % 250))
        else:
            events.append(metric(variant, rng.choice(("latency_ms", "error", "cost_cents")), rng.lognormvariate(5, 1), t, rollout))
    return events


def test_restored_fold_continues_byte_for_byte() -> None:
    events = _workload(3000)
    clean = fold(CanaryStats(last_n=20, window_ms=5_000, time_cap=32), events)
    stopped = fold(CanaryStats(last_n=20, window_ms=5_000, time_cap=32), events[:1700])
    resumed = CanaryStats(last_n=20, window_ms=5_000, time_cap=32)
    resumed.restore(stopped.snapshot())
    assert resumed.digest() == stopped.digest()
    for seq, event in enumerate(events[1700:], 1701):
        resumed.apply(event, seq)
    assert resumed.snapshot() == clean.snapshot()
    assert resumed.view("r2", "time") == clean.view("r2", "time")


def test_changed_parts_accumulate_to_the_full_state() -> None:
    events = _workload(2000, seed=3)
    stats = CanaryStats(last_n=10)
    stored: dict[str, bytes] = {}
    for seq, event in enumerate(events, 1):
        stats.apply(event, seq)
        if seq % 97 == 0:
            stored.update(stats.changed_parts())
    stored.update(stats.changed_parts())
    assert stats.changed_parts() == {}
    rebuilt = CanaryStats(last_n=10)
    rebuilt.restore_parts(stored)
    assert rebuilt.digest() == stats.digest()


def test_restore_refuses_a_snapshot_of_other_windows() -> None:
    snapshot = fold(CanaryStats(last_n=10), _workload(50)).snapshot()
    with pytest.raises(ValueError, match="last_n=10"):
        CanaryStats(last_n=100).restore(snapshot)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), max_size=6), st.integers(0, 2**16))
def test_any_restore_points_give_the_clean_fold(cuts: list[int], seed: int) -> None:
    events = _workload(400, seed)
    clean = fold(CanaryStats(last_n=8, window_ms=3_000, time_cap=16), events)
    stats = CanaryStats(last_n=8, window_ms=3_000, time_cap=16)
    for seq, event in enumerate(events):
        if seq in cuts:
            again = CanaryStats(last_n=8, window_ms=3_000, time_cap=16)
            again.restore(stats.snapshot())
            stats = again
        stats.apply(event, seq + 1)
    assert stats.digest() == clean.digest()
    assert not math.isnan(stats.now_ms())


@pytest.mark.parametrize("rollouts", [0, 3, 20])
def test_streaming_digest_equals_the_digest_of_the_snapshot(rollouts: int) -> None:
    from rollout_engine.consumers.projection import digest_of

    stats = CanaryStats()
    for r in range(rollouts):
        stats.apply(metric("b", "x", float(r), rollout=f"r{r}"), r)
    assert stats.digest() == digest_of(stats.snapshot())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e12, 1e12), st.sampled_from([0.0, -0.0, 1e-320, 5e-324, 1.0])),
                min_size=1, max_size=300),
       st.integers(1, 20))
def test_lazy_sketch_equals_adding_every_value_on_arrival(values: list[float], last_n: int) -> None:
    from rollout_engine.consumers.sketches import new_sketch, sketch_state
    from rollout_engine.consumers.windows import Series

    series = Series()
    eager = new_sketch()
    for i, value in enumerate(values):
        series.push(value, T0 + i * 1000, T0 + i * 1000 - 5_000, last_n, max(last_n, 8))
        eager.add(value)
    state = series.state()
    if len(values) > last_n:
        assert state.sketch == sketch_state(eager)
    else:
        assert state.sketch is None
