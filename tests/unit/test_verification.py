"""Verification-retry queue as a pure fold: the schedule is exact in event time, items
expire with their evidence or resolve on a conclusive outcome, and replay is bit-exact."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from rollout_engine.consumers.verification import VerificationProjection
from rollout_engine.engine.stack.consumer_runner import RecheckGauges
from rollout_engine.events import (
    BanditConfig,
    Outcome,
    RecheckClosed,
    RecheckRequest,
    Tick,
    command_id,
)

T0 = 1_700_000_000_000
R = "verify-r1"
S = 1_000


def outcome(i: int | str, t: int, verdict: str = "inconclusive", confidence: float | None = None, rollout: str = R) -> Outcome:
    return Outcome(
        id=f"o{i}-{t}", rollout=rollout, time_ms=t, producer="svc", decision_id=f"d{i}", variant="candidate",
        verdict=verdict, confidence=confidence,
    )


def tick(t: int) -> Tick:
    return Tick(id=f"tick-{t}", time_ms=t, producer="engine")


def run(p: VerificationProjection, events: list[object], start: int = 1) -> list[object]:
    out: list[object] = []
    for seq, event in enumerate(events, start):
        out.extend(p.apply(event, seq))
    return out


def ticks(start: int, end: int, every: int = 250) -> list[Tick]:
    return [tick(t) for t in range(start, end + 1, every)]


def test_retry_schedule_is_exact_in_event_time_and_exhausted_items_expire_with_evidence() -> None:
    p = VerificationProjection()
    emitted = run(p, [outcome(1, T0, confidence=0.4), *ticks(T0, T0 + 1500 * S)])
    requests = [e for e in emitted if isinstance(e, RecheckRequest)]
    assert [(r.attempt, r.time_ms) for r in requests] == [
        (1, T0 + 300 * S), (2, T0 + 600 * S), (3, T0 + 900 * S)
    ]
    assert [r.id for r in requests] == [command_id("recheck", R, "d1", n) for n in (1, 2, 3)]
    assert all(r.max_attempts == 3 and r.first_seen_ms == T0 and r.cause_id == f"o1-{T0}" for r in requests)
    [closed] = [e for e in emitted if isinstance(e, RecheckClosed)]
    assert (closed.status, closed.time_ms, closed.attempts) == ("expired", T0 + 1200 * S, 3)
    assert [ev.outcome_id for ev in closed.evidence] == [f"o1-{T0}"]
    assert closed.evidence[0].confidence == 0.4
    assert p.queues[R].items == {} and p.queues[R].counters == {"expired": 1, "opened": 1, "requests": 3}


def test_schedule_does_not_depend_on_tick_spacing() -> None:
    dense = run(VerificationProjection(), [outcome(1, T0), *ticks(T0, T0 + 1300 * S, 250)])
    sparse = run(VerificationProjection(), [outcome(1, T0), tick(T0 + 1300 * S)])
    assert dense == sparse, "a late tick emits every overdue request, each at its own due time"


def test_later_conclusive_outcome_resolves_the_item_and_stops_the_retries() -> None:
    p = VerificationProjection()
    emitted = run(p, [
        outcome(1, T0),
        tick(T0 + 300 * S),
        outcome(1, T0 + 400 * S, verdict="win", confidence=0.5),  # still below 0.8: evidence only
        outcome(1, T0 + 500 * S, verdict="win", confidence=0.95),
        *ticks(T0 + 500 * S, T0 + 2000 * S, 10_000),
    ])
    assert [type(e).__name__ for e in emitted] == ["RecheckRequest", "RecheckClosed"]
    closed = emitted[-1]
    assert (closed.status, closed.resolved_by, closed.attempts) == ("resolved", f"o1-{T0 + 500 * S}", 1)
    assert [ev.verdict for ev in closed.evidence] == ["inconclusive", "win", "win"]
    assert p.depth() == {}


def test_conclusive_outcomes_never_enter_the_queue_and_policy_overrides_apply() -> None:
    p = VerificationProjection()
    policy = {"verification": {"retry_interval_s": 60, "max_attempts": 1, "min_confidence": 0.5}}
    run(p, [BanditConfig(
        id="cfg", rollout=R, time_ms=T0, producer="cli", actor="alice", reason="faster re-checks", **policy,
    )])
    emitted = run(p, [
        outcome(1, T0, verdict="win", confidence=0.6),
        outcome(2, T0, verdict="loss"),
        outcome(3, T0, verdict="neutral", confidence=0.3),
        tick(T0 + 200 * S),
    ], start=2)
    assert [(type(e).__name__, e.time_ms) for e in emitted] == [
        ("RecheckRequest", T0 + 60 * S), ("RecheckClosed", T0 + 120 * S)
    ]
    assert emitted[-1].decision_id == "d3" and emitted[-1].status == "expired"


def test_queue_depth_and_oldest_age_are_exposed_as_gauges_and_the_queue_is_bounded() -> None:
    p = VerificationProjection(max_items=3)
    evicted = run(p, [outcome(i, T0 + i * S) for i in range(5)] + [tick(T0 + 100 * S)])
    assert [(e.decision_id, e.status) for e in evicted] == [("d0", "evicted"), ("d1", "evicted")]
    assert p.depth() == {R: 3}
    assert p.oldest_age_s() == {R: 98.0}
    registry = CollectorRegistry()
    gauges = RecheckGauges(registry)
    gauges.update(p)
    assert registry.get_sample_value("rollout_recheck_pending", {"rollout": R}) == 3
    assert registry.get_sample_value("rollout_recheck_oldest_age_seconds", {"rollout": R}) == 98.0
    run(p, [outcome(i, T0 + 200 * S, verdict="win") for i in range(2, 5)], start=10)
    gauges.update(p)
    assert registry.get_sample_value("rollout_recheck_pending", {"rollout": R}) == 0


def test_a_producer_clock_in_the_future_cannot_expire_the_queue_once_ticks_run() -> None:
    p = VerificationProjection()
    emitted = run(p, [tick(T0), outcome(1, T0), outcome(2, T0 + 10**9, verdict="win")])
    assert emitted == [] and p.clock.now_ms == T0 + 60 * S


def _log(seed: int) -> list[object]:
    rng = np.random.default_rng(seed)
    events: list[object] = []
    for i in range(300):
        t = T0 + i * 7 * S
        verdict = ["inconclusive", "win", "loss"][int(rng.integers(3))]
        events.append(outcome(int(rng.integers(120)), t, verdict=verdict, confidence=float(rng.random())))
        if i % 5 == 0:
            events.append(tick(t))
    return events


def _fold(events: list[object], cut: int | None = None) -> tuple[bytes, list[object]]:
    p = VerificationProjection(max_items=40)
    out: list[object] = []
    for seq, event in enumerate(events, 1):
        if seq == cut:
            q = VerificationProjection(max_items=40)
            q.restore(p.snapshot())
            p = q
        out.extend(p.apply(event, seq))
    return p.snapshot(), out


def test_replay_reproduces_the_queue_and_its_emitted_events_bit_for_bit() -> None:
    events = _log(5)
    snap, out = _fold(events)
    assert _fold(events) == (snap, out)
    assert _fold(events, cut=len(events) // 2) == (snap, out), "same after a restore mid-log"
    assert len(out) > 50


def test_incremental_parts_committed_per_batch_restore_to_the_same_queue() -> None:
    events = _log(9) + [outcome(i, T0 + 5000 * S, rollout="other") for i in range(20)] + [tick(T0 + 9000 * S)]
    continuous = VerificationProjection(max_items=40)
    emitted = run(continuous, events)
    rows: dict[str, bytes] = {}
    p = VerificationProjection(max_items=40)
    again: list[object] = []
    for start in range(0, len(events), 29):
        again.extend(run(p, events[start:start + 29], start + 1))
        rows.update(p.changed_parts())
        if start == 29 * 5:
            p = VerificationProjection(max_items=40)
            p.restore_parts(rows)
    assert again == emitted
    assert rows == continuous.all_parts() and p.snapshot() == continuous.snapshot()
