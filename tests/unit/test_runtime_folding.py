"""The runtime's pure folder: order, redelivery, gaps, crashes and dead letters, no I/O."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.control_consumer import CanonicalControl
from rollout_engine.consumers.folding import Delivery, Folder, fold, restore_parts, subject_for
from rollout_engine.events import (
    ControlState,
    Decision,
    KillSwitch,
    Metric,
    Outcome,
    ShadowResult,
    Tick,
    decode_from_log,
    encode,
    encode_batch,
)

T0 = 1_700_000_000_000


def make_log(n_messages: int = 60, seed: int = 5) -> list[Delivery]:
    """A log of single events, batches, ticks, control commands and a few bad messages."""
    rng = random.Random(seed)
    out: list[Delivery] = []
    for seq in range(1, n_messages + 1):
        t = T0 + seq * 400
        roll = rng.random()
        rollout = rng.choice(("a", "b"))
        if roll < 0.06:
            out.append(Delivery(seq, "ro.evt.a.metric", b"\xc1garbage"))
            continue
        if roll < 0.15:
            out.append(Delivery(seq, "ro.tick", encode(Tick(id=f"t{seq}", time_ms=t, producer="engine"))))
            continue
        if roll < 0.2:
            cmd = KillSwitch(id=f"k{seq}", rollout=rollout, time_ms=t, producer="api", actor="op", reason="x",
                             before=ControlState(canary_pct=10.0), after=ControlState(kill_switch=True))
            out.append(Delivery(seq, f"ro.ctl.{rollout}.kill_switch", encode(cmd)))
            continue
        batch = []
        kind = rng.randrange(3)  # a message carries one kind: its subject says which
        for i in range(rng.randrange(1, 6)):
            common = {"id": f"e{seq}-{i}", "rollout": rollout, "time_ms": t + rng.randrange(-900, 50), "producer": "p"}
            variant = rng.choice(("baseline", "candidate"))
            if kind == 0:
                shadow = ShadowResult(variant="x", diff={"agent": rng.random() < 0.5}) if rng.random() < 0.5 else None
                batch.append(Decision(unit="u", variant=variant, reason="canary", canary_pct=10.0, config_version=1,
                                      propensity=0.1, shadow=shadow, **common))
            elif kind == 1:
                batch.append(Outcome(decision_id="d", variant=variant, verdict=rng.choice(("win", "loss")),
                                     quality=rng.gauss(90, 3), **common))
            else:
                batch.append(Metric(variant=variant, name="latency_ms", value=rng.lognormvariate(5, 1), **common))
        out.append(Delivery(seq, f"ro.evt.{rollout}.{('decision', 'outcome', 'metric')[kind]}", encode_batch(batch)))
    return out


LOG = make_log()


def new_stats() -> CanaryStats:
    return CanaryStats(last_n=5, window_ms=2_000, time_cap=8)


def clean_fold() -> CanaryStats:
    """Every good event, one at a time, in log order."""
    stats = new_stats()
    for d in LOG:
        fold(stats, decode_from_log(d.subject, d.data)[0], d.seq)
    return stats


CLEAN = clean_fold().digest()
CLEAN_DEAD = {f"dlq-canary_stats-{d.seq}--1" for d in LOG if d.data.startswith(b"\xc1")}


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_batching_redelivery_gap_and_crash_gives_the_one_at_a_time_state(data: st.DataObject) -> None:
    last = len(LOG)
    stored_seq, stored_parts = 0, {}
    published: set[str] = set()
    folder = Folder(new_stats())
    for _ in range(400):
        if folder.seq >= last:
            break
        back = data.draw(st.integers(0, 4), label="redelivered")
        size = data.draw(st.integers(1, 12), label="size")
        seqs = list(range(max(1, folder.seq + 1 - back), min(last, folder.seq + size) + 1))
        lost = data.draw(st.sets(st.sampled_from(seqs)), label="lost") if len(seqs) > 1 else set()
        order = data.draw(st.permutations([s for s in seqs if s not in lost]), label="order")
        result = folder.fold_batch([LOG[s - 1] for s in order])
        assert result.seq >= stored_seq and all(h.seq > result.seq + 1 for h in result.held)
        crash = data.draw(st.sampled_from(("none", "none", "before_commit", "after_commit")), label="crash")
        if crash != "before_commit":
            stored_seq = result.seq
            stored_parts.update(result.parts)
            published |= {row.id for row in Folder.outbox_of(result)}
        if crash != "none":
            stats = new_stats()
            restore_parts(stats, stored_parts)
            folder = Folder(stats, stored_seq)
    assert folder.seq == last
    assert folder.projection.digest() == CLEAN
    assert published == CLEAN_DEAD


def test_a_message_after_a_gap_is_held_not_folded() -> None:
    folder = Folder(new_stats())
    result = folder.fold_batch([LOG[0], LOG[2], LOG[3]])
    assert result.seq == 1 and [d.seq for d in result.held] == [3, 4]
    folder.skip_to(2)  # the runtime found seq 2 deleted from the stream
    assert folder.fold_batch(result.held).seq == 4


def test_a_reducer_exception_becomes_a_dead_letter_and_the_fold_goes_on() -> None:
    class Fragile(CanonicalControl):
        def apply(self, event, seq):  # type: ignore[no-untyped-def]
            if seq == 2:
                raise ZeroDivisionError("boom")
            return super().apply(event, seq)

    folder = Folder(Fragile())
    kill = KillSwitch(id="k", rollout="a", time_ms=T0, producer="api", actor="op", reason="x",
                      before=ControlState(), after=ControlState(kill_switch=True))
    subject = "ro.ctl.a.kill_switch"
    result = folder.fold_batch([Delivery(seq, subject, encode(kill)) for seq in (1, 2, 3)])
    assert result.seq == 3 and result.events == 3
    assert [(d.seq, d.field, d.reason) for d in result.dead] == [(2, "projection", "ZeroDivisionError: boom")]


def test_control_snapshot_is_canonical_whatever_was_pushed_to_kv() -> None:
    folder = Folder(CanonicalControl())
    folder.fold_batch(LOG)
    pushed = CanonicalControl()
    pushed.restore(folder.projection.snapshot())
    assert pushed.snapshot() == folder.projection.snapshot()
    assert pushed.states == folder.projection.states and pushed.states


def test_emitted_events_go_to_their_subject() -> None:
    kill = KillSwitch(id="k", rollout="a", time_ms=T0, producer="api", actor="op", reason="x",
                      before=ControlState(), after=ControlState(kill_switch=True))
    assert subject_for(kill) == "ro.ctl.a.kill_switch"
