"""De-duplication by event id per rollout (consumers/dedupe.py) and in the one fold: no I/O
except the store round trip, which uses a temporary SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.control import ControlProjection
from rollout_engine.consumers.dedupe import SeenIds, SeenWrite
from rollout_engine.consumers.folding import Folder, fold_events, fold_message
from rollout_engine.consumers.store import SQLiteConsumerStore
from rollout_engine.engine.logtools.replay import replay_messages
from rollout_engine.events import (
    ControlState,
    KillSwitch,
    LogMessage,
    Outcome,
    encode,
    encode_batch,
    subjects,
)

T0 = 1_700_000_000_000
WINDOW_MS = 300_000


def outcome(event_id: str, rollout: str = "r1", variant: str = "candidate") -> Outcome:
    return Outcome(id=event_id, rollout=rollout, time_ms=T0, producer="svc", decision_id="d1", variant=variant,
                   verdict="win", quality=90.0)


def outcome_message(seq: int, *events: Outcome, time_ms: int = T0) -> LogMessage:
    return LogMessage(seq, subjects.event(events[0].rollout, "outcome"), encode_batch(list(events)), time_ms)


def outcomes(stats: CanaryStats, rollout: str = "r1", variant: str = "candidate") -> int:
    view = stats.view(rollout, "all")
    return view[variant].outcomes if variant in view else 0


# --- the class -------------------------------------------------------------------------------
def test_an_id_is_new_once_within_the_window_and_new_again_after_it() -> None:
    seen = SeenIds(window_s=300)
    assert seen.first("r1", "e1", T0)
    assert not seen.first("r1", "e1", T0 + WINDOW_MS)  # at the edge: still within
    assert seen.first("r1", "e1", T0 + WINDOW_MS + 1)
    assert len(seen) == 1


def test_ids_are_per_rollout() -> None:
    seen = SeenIds()
    assert seen.first("r1", "e1", T0) and seen.first("r2", "e1", T0)
    assert not seen.first("r2", "e1", T0)


def test_a_message_repeating_an_id_keeps_its_first_copy_only() -> None:
    seen = SeenIds()
    a, b = outcome("e1"), outcome("e2")
    assert seen.fresh([a, b, outcome("e1")], T0) == [a, b]
    assert seen.fresh([outcome("e2"), outcome("e3")], T0) == [outcome("e3")]


def test_entries_older_than_the_window_are_pruned_as_the_rollout_grows() -> None:
    seen = SeenIds(window_s=1)
    for i in range(5_000):
        seen.first("r1", f"e{i}", T0 + i * 10)  # 100 ids a second: the window holds about 100
    assert len(seen) < 2_100  # pruned each time the rollout doubles past 1,024


def test_the_cap_evicts_the_oldest_entries_first_across_rollouts() -> None:
    seen = SeenIds(cap=100)
    for i in range(60):
        seen.first("old", f"o{i}", T0 + i)
    for i in range(41):
        seen.first("new", f"n{i}", T0 + 1_000 + i)
    assert len(seen) == 50  # down to half the cap in one step
    assert seen.first("old", "o0", T0 + 2_000)  # the oldest were forgotten
    assert not seen.first("new", "n0", T0 + 2_000)  # the newer ones were kept
    assert not seen.first("old", "o59", T0 + 2_000)


@pytest.mark.parametrize("cap", [50, 200_000])
def test_a_set_reloaded_from_its_writes_decides_as_the_one_that_never_stopped(cap: int) -> None:
    live = SeenIds(window_s=2, cap=cap, journal=True)
    writes: list[SeenWrite] = []
    for step in range(400):  # 40 ids a step over 7 rollouts, some repeated: full writes and deltas
        rollout = f"r{step % 7}"
        for i in range(40):
            live.first(rollout, f"e{(step * 40 + i) % 9_000}", T0 + step * 30)
        write = live.flush()
        if write is not None:
            writes.append(write)
    fulls = [i for i, w in enumerate(writes) if w.full]
    assert fulls and fulls[-1] < len(writes) - 1  # a full write, then deltas (what the store keeps)
    reloaded = SeenIds(window_s=2, cap=cap).load(writes[fulls[-1]:])
    assert reloaded.dump() == live.dump() and len(reloaded) == len(live)
    probes = [(f"r{i % 7}", f"e{i * 13 % 9_000}", T0 + 12_100) for i in range(500)]
    assert [reloaded.first(*p) for p in probes] == [live.first(*p) for p in probes]


# --- the fold ---------------------------------------------------------------------------------
def test_five_sends_of_one_event_id_fold_once_and_are_counted() -> None:
    folder = Folder(CanaryStats())
    log = [outcome_message(seq, outcome("same"), time_ms=T0 + seq) for seq in range(1, 6)]
    result = folder.fold_batch(log)
    assert outcomes(folder.projection) == 1  # type: ignore[arg-type]
    assert (result.events, result.duplicates, result.dead) == (1, 4, [])


def test_replay_and_the_folder_agree_on_duplicates() -> None:
    log = [outcome_message(seq, outcome(f"e{seq % 3}"), outcome("x"), time_ms=T0 + seq) for seq in range(1, 10)]
    folder = Folder(CanaryStats())
    folder.fold_batch(log)
    replayed = CanaryStats()
    result = replay_messages(log, [replayed])
    assert replayed.digest() == folder.projection.digest()
    assert (result.events, result.duplicates) == (4, 14)


def test_commands_are_not_de_duplicated_by_id() -> None:
    kill = KillSwitch(id="k1", rollout="r1", time_ms=T0, producer="api", actor="op", reason="x",
                      before=ControlState(), after=ControlState(kill_switch=True))
    seen = SeenIds()
    seen.first("r1", "k1", T0)  # a producer event took the id first
    folded = fold_message(LogMessage(1, subjects.control("r1", "kill_switch"), encode(kill), T0),
                          [ControlProjection()], seen)
    assert (folded[0].events, folded[0].duplicates) == (1, 0)


def test_the_simulator_path_folds_every_event() -> None:
    stats = CanaryStats()
    fold_events(stats, [outcome("same")] * 3, 1)
    assert outcomes(stats) == 3


async def test_the_store_keeps_the_seen_ids_with_the_position(tmp_path: Path) -> None:
    folder = Folder(CanaryStats())
    async with SQLiteConsumerStore(tmp_path / "c.sqlite", "c") as store:
        for seq in range(1, 4):
            result = folder.fold_batch([outcome_message(seq, outcome(f"e{seq}"), outcome("same"), time_ms=T0 + seq)])
            await store.commit(result.seq, result.parts, Folder.outbox_of(result), folder.seen.flush())
    async with SQLiteConsumerStore(tmp_path / "c.sqlite", "c") as store:
        stored = await store.load()
    restarted = Folder(CanaryStats(), stored.seq, seen=SeenIds().load(stored.seen))
    restarted.projection.restore_parts(stored.parts)
    result = restarted.fold_batch([outcome_message(4, outcome("same"), outcome("e4"), time_ms=T0 + 4)])
    assert (stored.seq, result.events, result.duplicates) == (3, 1, 1)
    assert outcomes(restarted.projection) == 5  # type: ignore[arg-type]  # e1, same, e2, e3, then e4


def test_projections_of_engine_messages_only_keep_no_seen_set() -> None:
    from rollout_engine.consumers.control import ControlProjection
    from rollout_engine.consumers.notifier import NotifierProjection

    assert Folder(ControlProjection()).seen is None and Folder(NotifierProjection()).seen is None
    assert Folder(CanaryStats()).seen is not None


def test_an_offline_set_keeps_no_journal_and_refuses_to_flush() -> None:
    """Replay, backtests and explain never store the set: with a journal it held every id
    of the log until the end, whatever the cap (memory growing with the log)."""
    import tracemalloc

    from rollout_engine.engine.logtools.replay import Replayer

    def traced_after(seen: SeenIds) -> int:
        tracemalloc.start()
        try:
            for i in range(20_000):
                seen.first(f"r{i % 3}", f"event-{i:08d}", T0 + i)
            return tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    offline, journaled = SeenIds(cap=100), SeenIds(cap=100, journal=True)
    assert traced_after(offline) < 100_000 < traced_after(journaled)  # 100 ids, against all 20,000 in the journal
    assert len(offline) == len(journaled) <= 100
    with pytest.raises(RuntimeError, match="journal=True"):
        offline.flush()
    assert journaled.flush() is not None
    replayer = Replayer([])
    assert replayer.seen is not None
    with pytest.raises(RuntimeError, match="journal"):
        replayer.seen.flush()


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(st.tuples(st.sampled_from(["r1", "r2"]), st.lists(st.sampled_from("abcdefgh"), max_size=6),
                                 st.integers(0, 400)), max_size=60))
def test_the_set_decides_as_the_plain_rule_on_any_run_of_messages(groups) -> None:
    """The plain rule: an id of a rollout is new when it was never recorded, or recorded
    more than the window before; a message repeating an id keeps its first copy. The set
    (prune, the all-new fast path, the loop) must agree with it on every message."""
    seen = SeenIds(window_s=1.0, journal=True)
    recorded: dict[tuple[str, str], int] = {}
    time_ms = T0
    for rollout, ids, step in groups:
        time_ms += step
        expected = []
        for event_id in ids:
            stored = recorded.get((rollout, event_id))
            if stored is None or time_ms - stored > 1_000:
                recorded[(rollout, event_id)] = time_ms
                expected.append(event_id)
        assert seen._group(rollout, list(ids), time_ms) == expected
    assert len(seen) == sum(len(entry.ids) for entry in seen._rollouts.values())
