"""Resting rollouts (consumers/resident.py) change no output: a fold that keeps only a few
rollouts in memory and loads the others from its committed parts gives, batch by batch,
the same parts and the same emitted events as a fold that keeps them all, and the same
digest; a tick still reaches every rollout with something due.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.consumers import registry
from rollout_engine.consumers.consumer import NO_METRICS
from rollout_engine.consumers.folding import Folder
from rollout_engine.consumers.resident import Resident, resident_for, rollout_of
from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Decision,
    KillSwitch,
    LogMessage,
    Metric,
    Outcome,
    Resume,
    Tick,
    encode,
    encode_batch,
    subjects,
)
from tests.unit.test_projection_contract import POLICY, T0

NAMES = registry.names()
TIMED = {"guards": [{"name": "q", "metric": "latency_ms", "threshold": 300.0, "window": "time", "min_samples": 2}]}


def _producer(seq: int, rollout: str, rng: random.Random, t: int) -> LogMessage:
    kind = rng.randrange(3)
    batch = []
    for i in range(rng.randrange(1, 5)):
        common = {"id": f"e{seq}-{i}", "rollout": rollout, "time_ms": t + rng.randrange(-500, 50), "producer": "p"}
        variant = rng.choice(("baseline", "candidate"))
        if kind == 0:
            batch.append(Decision(unit="u", variant=variant, reason="canary", canary_pct=50.0, config_version=1,
                                  propensity=0.5, **common))
        elif kind == 1:
            batch.append(Outcome(decision_id=f"d{seq}", variant=variant, verdict=rng.choice(("win", "loss")),
                                 quality=rng.gauss(90 if variant == "baseline" else 70, 3), **common))
        else:
            value = rng.lognormvariate(5, 0.3) * (2 if variant == "candidate" and rollout < "r3" else 1)
            batch.append(Metric(variant=variant, name="latency_ms", value=value, **common))
    return LogMessage(seq, subjects.event(rollout, ("decision", "outcome", "metric")[kind]), encode_batch(batch))


def _control(seq: int, rollout: str, rng: random.Random, t: int) -> LogMessage:
    common = {"id": f"c{seq}", "rollout": rollout, "time_ms": t, "producer": "api", "actor": "op", "reason": "x"}
    before = ControlState(canary_pct=50.0, config_version=seq)
    kind = rng.randrange(4)
    if kind < 2:
        event = ConfigChange(before=before, after=ControlState(canary_pct=50.0, policy_version=seq),
                             policy=(POLICY, TIMED)[kind], **common)
    elif kind == 2:
        event = KillSwitch(before=before, after=ControlState(kill_switch=True), **common)
    else:
        event = Resume(before=before, after=ControlState(canary_pct=50.0), **common)
    return LogMessage(seq, subjects.for_event(event), encode(event))


def make_log(seed: int, n_messages: int, n_rollouts: int) -> list[LogMessage]:
    """Producer batches over ``n_rollouts`` rollouts, ticks, policies (one with a time window), kills, resumes."""
    rng = random.Random(seed)
    out = []
    for seq in range(1, n_messages + 1):
        t, roll = T0 + seq * 300, rng.random()
        rollout = f"r{rng.randrange(n_rollouts)}"
        if roll < 0.12:
            out.append(LogMessage(seq, subjects.TICK, encode(Tick(id=f"t{seq}", time_ms=t, producer="engine"))))
        elif roll < 0.2:
            out.append(_control(seq, rollout, rng, t))
        else:
            out.append(_producer(seq, rollout, rng, t))
    return out


def _batches(log: list[LogMessage], sizes: list[int]) -> list[list[LogMessage]]:
    out, at = [], 0
    for size in sizes:
        if at >= len(log):
            break
        out.append(log[at:at + size])
        at += size
    if at < len(log):
        out.append(log[at:])
    return out


def _fold(name: str, batches: list[list[LogMessage]], cap: int | None,
          lagging: bool = False) -> tuple[list, Folder, Resident | None]:
    """Fold batch by batch, committing to a dict; per batch (parts, emitted bytes).

    ``lagging``: as the runtime's commit lane does, batch N's commit lands only after
    batch N+1 is folded, and the rest that follows it keeps what N+1 changed."""
    projection = registry.build(name).projection
    store: dict[str, bytes] = {}
    resident = None if cap is None else Resident(projection, cap, lambda keys: {k: store[k] for k in keys if k in store})
    folder = Folder(projection, resident=resident)
    trace, in_flight = [], None

    def land(parts: dict[str, bytes], keep: dict[str, bytes]) -> None:
        store.update(parts)  # the commit
        if resident is not None:
            resident.settle(parts, keep=keep)
            assert resident.in_memory <= cap + len(keep) or resident.pinned, "only pinned or kept rollouts exceed the cap"

    for batch in batches:
        result = folder.fold_batch(batch)
        if not lagging:
            land(result.parts, {})
        elif in_flight is not None:
            land(in_flight.parts, result.parts)
        in_flight = result
        trace.append((result.parts, [encode(e) for e in result.emitted], [d.reason for d in result.dead]))
    if lagging and in_flight is not None:
        land(in_flight.parts, {})
    return trace, folder, resident


def _check_same(name: str, log: list[LogMessage], sizes: list[int], cap: int, lagging: bool = False) -> Resident:
    batches = _batches(log, sizes)
    whole, full, _ = _fold(name, batches, None)
    capped, _, resident = _fold(name, batches, cap, lagging)
    assert resident is not None
    for index, (expected, got) in enumerate(zip(whole, capped, strict=True)):
        assert got == expected, f"{name}: batch {index} differs with {cap} rollouts in memory"
    assert resident.digest() == full.projection.digest()
    assert dict(resident.parts()) == full.projection.all_parts()  # type: ignore[attr-defined]
    return resident


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(20, 160), rollouts=st.integers(1, 14), cap=st.integers(1, 6),
       sizes=st.lists(st.integers(1, 20), max_size=40))
def test_a_capped_fold_gives_the_same_parts_commands_and_digest(name: str, seed: int, n: int, rollouts: int,
                                                                 cap: int, sizes: list[int]) -> None:
    _check_same(name, make_log(seed, n, rollouts), sizes, cap)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(20, 160), rollouts=st.integers(1, 14), cap=st.integers(1, 6),
       sizes=st.lists(st.integers(1, 20), max_size=40))
def test_commits_one_batch_behind_the_fold_change_nothing(name: str, seed: int, n: int, rollouts: int, cap: int,
                                                          sizes: list[int]) -> None:
    """The commit lane: a rollout the next, uncommitted batch changed must not rest on its
    older stored part (it would be loaded back without that batch's change)."""
    _check_same(name, make_log(seed, n, rollouts), sizes, cap, lagging=True)


@pytest.mark.parametrize("name", ["canary_stats", "rollback"])
def test_rollouts_do_rest_and_come_back_with_a_cap_of_five(name: str) -> None:
    """The property above has teeth: rollouts left memory and were loaded again, and the
    rollback consumer still emitted kills and staged steps with most rollouts resting."""
    log = make_log(3, 600, 40)
    resident = _check_same(name, log, [7] * 200, 5)
    assert resident.rested > 50 and resident.loads > 50, (resident.rested, resident.loads)
    assert resident.resting, "nothing rests at the end"
    if name == "rollback":
        _, full, _ = _fold(name, _batches(log, [7] * 200), None)
        assert resident.pinned, "a rollout with something due stayed in memory"
        assert all(not full.projection.rests(key) for key in resident.pinned)  # type: ignore[attr-defined]
        kinds = {type(e).__name__ for _, emitted, _ in _fold(name, _batches(log, [7] * 200), 5)[0] for e in emitted}
        assert kinds, "the log makes the rollback consumer emit"


def test_status_of_a_resting_rollout_loads_it_and_lets_it_rest_again() -> None:
    batches = _batches(make_log(5, 300, 20), [10] * 30)
    _, full, _ = _fold("rollback", batches, None)
    _, folder, resident = _fold("rollback", batches, 3)
    assert resident is not None and resident.resting
    status = resident.reading(folder.projection.status)  # type: ignore[attr-defined]
    for rollout in sorted(resident.resting):
        assert status(rollout) == full.projection.status(rollout)  # type: ignore[attr-defined]
        assert rollout in resident.resting and rollout not in folder.projection.rollouts  # type: ignore[attr-defined]
    assert resident.keys() == sorted(full.projection.rollouts)  # type: ignore[attr-defined]


def test_restore_keeps_at_most_the_cap_in_memory_and_continues_byte_for_byte() -> None:
    log = make_log(9, 400, 30)
    _, full, _ = _fold("canary_stats", _batches(log, [8] * 50), None)
    first = log[:200]
    _, folder, _ = _fold("canary_stats", _batches(first, [8] * 25), None)
    store = folder.projection.all_parts()  # type: ignore[attr-defined]
    projection = registry.build("canary_stats").projection
    resident = Resident(projection, 4, lambda keys: {k: store[k] for k in keys if k in store})
    resident.restore(sorted(store.items()))
    assert resident.in_memory == 4 and len(resident.resting) == len(store) - 5  # the meta part is no rollout
    again = Folder(projection, seq=200, resident=resident)
    for batch in _batches(log[200:], [8] * 25):
        result = again.fold_batch(batch)
        store.update(result.parts)
        resident.settle(result.parts)
    assert resident.digest() == full.projection.digest()


def test_rollout_of_reads_the_subject_only() -> None:
    assert rollout_of("ro.evt.checkout.metric") == "checkout"
    assert rollout_of("ro.evt.checkout.metric.3") == "checkout"
    assert rollout_of("ro.ctl.checkout.kill_switch") == "checkout"
    assert rollout_of("ro.tick") is None and rollout_of("ro.evt.x") is None and rollout_of("other.evt.a.b") is None


def test_a_projection_without_parts_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError, match="resident_rollouts = 0"):
        Resident(object(), 5, dict)
    with pytest.raises(ValueError, match="at least 1"):
        Resident(registry.build("canary_stats").projection, 0, dict)


@pytest.mark.parametrize("name", ["canary_stats", "rollback"])
def test_the_kv_mirror_value_of_a_resting_rollout_is_its_value_in_memory(name: str) -> None:
    """A restart puts what its store lists, and those rollouts may be resting: the value
    the mirror puts for each is the one an uncapped consumer puts (not an empty status).
    The control and bandit projections let no rollout rest (``resident_for`` is None)."""
    batches = _batches(make_log(5, 400, 20), [10] * 40)
    whole = registry.build(name)
    folder = Folder(whole.projection)
    for batch in batches:
        folder.fold_batch(batch)
    capped, store = registry.build(name), {}
    resident = resident_for(capped, 3, lambda keys: {k: store[k] for k in keys if k in store}, NO_METRICS.rollouts, name)
    again = Folder(capped.projection, resident=resident)
    for batch in batches:
        result = again.fold_batch(batch)
        store.update(result.parts)
        resident.settle(result.parts)  # type: ignore[union-attr]
    assert resident is not None and len(resident.resting) > 10, "the check has resting rollouts to read"
    assert capped.mirror is not None and whole.mirror is not None
    rollouts = sorted(whole.projection.rollouts)  # type: ignore[attr-defined]
    assert rollouts
    for rollout in rollouts:
        assert capped.mirror.value_of(rollout) == whole.mirror.value_of(rollout), rollout


def test_control_and_bandit_let_no_rollout_rest() -> None:
    for name in ("control", "bandit"):
        assert resident_for(registry.build(name), 3, dict, NO_METRICS.rollouts, name) is None
