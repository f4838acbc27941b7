"""Replay split over processes (engine/logtools/replay.py ``feed_parallel``) equals a one-process replay.

The folds are pure, so a child that inherits the state after the timed warm-up and folds
the rest of the log must produce the same snapshots, byte for byte, as folding it here;
the counts and the emitted commands must add up the same way. A projection that claims
to be ``separable`` (the rollback fold) is folded by several processes, each for its own
rollouts: its merged parts must equal the one-process fold too, on logs holding every
kind of message (tests/unit/test_projection_contract.py's), which is what makes the
claim true.
"""

from __future__ import annotations

import pytest

from bench.workload import make_batches
from rollout_engine.consumers import registry
from rollout_engine.engine.logtools import replay
from rollout_engine.engine.logtools.replay import (
    WARMUP,
    Replayer,
    make_projections,
    replay_messages,
    replay_parallel,
)
from rollout_engine.engine.logtools.replay_split import plan_split, rollout_weights
from rollout_engine.events import LogMessage, Metric, Tick, encode, encode_batch, subjects
from tests.unit.test_projection_contract import make_log


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
    replayer = Replayer(make_projections())
    two = replayer.feed_parallel(messages, workers=2).result()
    assert replayer.plan is not None and replayer.plan.separable == {"rollback"}
    assert set(replayer.plan.owner.values()) == {0, 1}, "the rollback fold's rollouts are shared by both processes"
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


def test_only_projections_that_claim_it_are_separable() -> None:
    """The claim is checked below for every projection making it; today that is the rollback fold."""
    separable = {name for name in registry.names() if getattr(registry.build(name).projection, "separable", False)}
    assert separable == {"rollback"}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("workers", [2, 3])
def test_separable_projections_split_by_rollout_equal_one_process(monkeypatch: pytest.MonkeyPatch, seed: int,
                                                                   workers: int) -> None:
    """Every kind of message (commands, kills, resumes, policies, bandit configs, guardrails,
    forged and garbage messages, ticks) folded by rollout shares: the same digests, counts
    and emitted commands. Only the rollback fold is split; alone, so its rollouts go to
    every process."""
    monkeypatch.setattr(replay, "WARMUP", 20)
    messages = make_log(400, seed)
    one = replay_messages(messages, make_projections(["rollback"]))
    replayer = Replayer(make_projections(["rollback"]))
    split = replayer.feed_parallel(messages, workers=workers).result()
    assert replayer.plan is not None and len(set(replayer.plan.owner.values())) == 2  # rollouts a and b
    assert split.digests == one.digests
    assert (split.messages, split.events, split.rejected, split.duplicates, split.last_seq) == (
        one.messages, one.events, one.rejected, one.duplicates, one.last_seq)
    assert split.emitted == one.emitted and split.errors == one.errors
    assert one.emitted["rollback"] > 0
    every = replay_parallel(messages, make_projections(), workers=workers)
    assert every.digests == replay_messages(messages, make_projections()).digests


def test_the_plan_balances_whole_projections_then_rollouts() -> None:
    costs = {"rollback": 6.0, "canary_stats": 2.0, "bandit": 0.5, "control": 0.5}
    plan = plan_split(costs, {"rollback"}, {f"r{i}": 100 for i in range(10)}, 2)
    assert plan.whole == [{"canary_stats"}, {"bandit", "control"}]  # largest first, to the least loaded
    assert max(plan.loads) - min(plan.loads) <= 0.6 + 1e-9, plan.loads  # within one rollout's cost
    assert sorted(set(plan.owner)) == [f"r{i}" for i in range(10)]
    alone = plan_split(costs, {"rollback"}, {}, 2)  # no rollout in the rest of the log: folded whole
    assert alone.separable == set() and any("rollback" in w for w in alone.whole)
    assert rollout_weights(_log()[:3]) and None not in rollout_weights(_log())
