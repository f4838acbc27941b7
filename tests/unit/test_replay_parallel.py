"""Replay split over processes (engine/logtools/replay.py ``feed_parallel``) equals a one-process replay.

The folds are pure, so a child that inherits the state after the timed warm-up and folds
the rest of the log must produce the same snapshots, byte for byte, as folding it here;
the counts and the emitted commands must add up the same way.
"""

from __future__ import annotations

from bench.workload import make_batches
from rollout_engine.engine.logtools.replay import (
    WARMUP,
    Replayer,
    make_projections,
    replay_messages,
    replay_parallel,
)
from rollout_engine.events import LogMessage, Metric, Tick, encode, encode_batch, subjects


def _log() -> list[LogMessage]:
    """The bench workload, ticks, and a candidate whose latency degrades (so kills happen)."""
    messages: list[LogMessage] = []
    for rollout, kind, events in make_batches(2 * WARMUP * 100 + 5_000, rollouts=6):
        messages.append(LogMessage(len(messages) + 1, subjects.event(rollout, kind), encode_batch(events)))
        if len(messages) % 50 == 0:
            tick = Tick(id=f"tick-{len(messages)}", time_ms=events[-1].time_ms, producer="test")
            messages.append(LogMessage(len(messages) + 1, subjects.TICK, encode(tick)))
    last = events[-1].time_ms
    for i in range(300):
        bad = Metric(id=f"bad-{i}", rollout="bench-1", time_ms=last + i, producer="test", variant="candidate",
                     name="latency_ms", value=50_000.0)
        messages.append(LogMessage(len(messages) + 1, subjects.event("bench-1", "metric"), encode(bad)))
    messages.append(LogMessage(len(messages) + 1, subjects.event("bench-1", "metric"), b"\xc1 not msgpack"))
    return messages


def test_parallel_replay_equals_one_process_replay() -> None:
    messages = _log()
    one = replay_messages(messages, make_projections())
    two = replay_parallel(messages, make_projections(), workers=2)
    assert two.digests == one.digests
    assert (two.messages, two.events, two.rejected, two.last_seq) == (one.messages, one.events, one.rejected,
                                                                        one.last_seq)
    assert two.emitted == one.emitted and two.errors == one.errors
    assert one.emitted["rollback"] > 0, "the degraded candidate should have been killed"
    assert one.rejected == 1


def test_restored_projections_hold_the_children_state() -> None:
    """After a parallel feed the parent's projection objects are the folded state (not empty)."""
    messages = _log()
    projections = make_projections()
    Replayer(projections).feed_parallel(messages, workers=2)
    reference = make_projections()
    replay_messages(messages, reference)
    assert [p.snapshot() for p in projections] == [p.snapshot() for p in reference]


def test_small_log_or_one_worker_folds_in_process() -> None:
    messages = _log()[: WARMUP]
    assert replay_parallel(messages, make_projections()).digests == replay_messages(messages, make_projections()).digests
    full = _log()
    assert replay_parallel(full, make_projections(), workers=1).digests == replay_messages(
        full, make_projections()).digests
