"""Clock skew: a producer with a clock decades ahead (or behind) cannot move engine time.

The policy lives in ``consumers/eventtime.py`` and is shared by canary stats, the
rollback guards, the bandit and the verification queue: once engine ticks are seen, a
producer event moves *now* at most 60 s past the last tick; an old event never moves it
back.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.eventtime import MAX_AHEAD_MS, EventClock, bounded
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, runs
from rollout_engine.events import Event, KillSwitch, Metric, Tick

Y2099 = 4_070_908_800_000
R = "skewed"


def tick(t: int) -> Tick:
    return Tick(id=f"tick-{t}", time_ms=t, producer="engine")


def fold(p: RollbackProjection, events: Iterable[Event]) -> list[Event]:
    emitted: list[Event] = []
    seq = 1
    for event in events:
        for command in p.apply(event, seq):
            emitted.append(command)
            seq += 1
            p.apply(command, seq)
        seq += 1
    return emitted


def metric(t: int, value: float = 100.0, variant: str = "candidate", rollout: str = R) -> Metric:
    return Metric(id=f"m{t}-{value}", rollout=rollout, time_ms=t, producer="skewed", variant=variant,
                  name="latency_ms", value=value)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=40))
@settings(max_examples=300)
def test_the_clock_says_it_moved_exactly_when_the_tick_or_now_moved(steps: list[tuple[bool, int]]) -> None:
    """``EventClock.advance`` (its rule inlined for speed) against the plain rule: a tick
    sets the last tick when later, every time moves *now* when later, a producer's time
    bounded by the last tick (a projection marks its engine-wide part dirty on True)."""
    clock = EventClock(skew_ms=1_000)
    now = last_tick = 0
    for is_tick, t in steps:
        event = tick(t) if is_tick else metric(t)
        before = (now, last_tick)
        if is_tick:
            last_tick = max(last_tick, t)
        now = max(now, t if is_tick else bounded(t, last_tick, 1_000))
        assert clock.advance(event) == ((now, last_tick) != before)
        assert (clock.now_ms, clock.last_tick_ms) == (now, last_tick)


@given(st.integers(0, 2**53), st.integers(0, 2**53))
@settings(max_examples=300)
def test_bounded_never_runs_more_than_the_cap_past_a_tick(time_ms: int, tick_ms: int) -> None:
    t = bounded(time_ms, tick_ms)
    assert t <= time_ms
    if tick_ms:
        assert t <= tick_ms + MAX_AHEAD_MS
        assert t == time_ms or t == tick_ms + MAX_AHEAD_MS


def test_a_producer_in_2099_cannot_evict_the_time_window() -> None:
    stats = CanaryStats(last_n=50, window_ms=300_000)
    stats.apply(tick(T0))
    for i in range(40):
        stats.apply(metric(T0 + i * 100, float(i)))
    stats.apply(metric(Y2099, 999.0, rollout=R))
    view = stats.view(R, "time")["candidate"].metrics["latency_ms"]
    assert view.n == 41  # nothing evicted: the 2099 sample counts at tick + 60 s
    assert stats.now_ms(R) == T0 + MAX_AHEAD_MS


def test_old_events_never_move_time_back() -> None:
    stats = CanaryStats(last_n=50, window_ms=300_000)
    stats.apply(tick(T0))
    stats.apply(metric(T0 + 10))
    stats.apply(metric(0, 5.0))  # 1970
    assert stats.now_ms(R) == T0 + 10
    assert stats.view(R, "last_n")["candidate"].metrics["latency_ms"].n == 2  # counted in last-N
    assert stats.view(R, "time")["candidate"].metrics["latency_ms"].n == 1  # but not in the time window


def test_a_producer_in_2099_cannot_fast_forward_a_sustain_timer() -> None:
    p = RollbackProjection()
    sustain = 10 * 60_000  # ten minutes of sustained breach before a kill
    fold(p, [tick(T0 - 10), policy_change(R, {"hysteresis": {"sustain_ms": sustain}}),
             *runs(R, 100, candidate=Profile(latency_ms=2_000.0))])  # pending: breach seen, sustain running
    assert p.status(R)["guards"]["latency"]["state"] == "pending", p.status(R)["guards"]
    out = fold(p, [*runs(R, 20, candidate=Profile(latency_ms=2_000.0), t0=Y2099, start=100)])
    assert not [e for e in out if isinstance(e, KillSwitch)], "a skewed clock fired a kill switch early"
    assert p.status(R)["now_ms"] <= T0 + MAX_AHEAD_MS
    out = fold(p, [tick(T0 + t) for t in range(60_000, sustain, 60_000)])
    assert not [e for e in out if isinstance(e, KillSwitch)]
    [kill] = [e for e in fold(p, [tick(T0 + sustain + 60_000)]) if isinstance(e, KillSwitch)]
    assert kill.time_ms == T0 + sustain + 60_000  # engine time, not the producer's 2099


def test_the_engine_clock_survives_restore() -> None:
    p = RollbackProjection()
    fold(p, [tick(T0), *runs(R, 10)])
    q = RollbackProjection()
    q.restore(p.snapshot())
    assert q.tick_ms == T0 and q.snapshot() == p.snapshot()
    fold(q, [metric(Y2099)])
    assert q.status(R)["now_ms"] == T0 + MAX_AHEAD_MS
