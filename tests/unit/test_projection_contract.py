"""The projection contract, for EVERY registered consumer: restartable through any crash,
redelivery, reordering and gap, with exactly-once effects, and one base holding the state.

What a consumer commits after each batch (changed parts, position, outbox rows) is what
a restarted process resumes from; whatever the batching, redeliveries, held messages
and crashes (before or after the commit), the state must end equal to folding the log
one message at a time, and the set of published rows (emitted events, dead letters)
equal to the clean run's: nothing lost, nothing published under a second id.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.consumers import registry
from rollout_engine.consumers.folding import Folder, fold_events, fold_message, read_message
from rollout_engine.consumers.projection import Projection, RolloutProjection, digest_of
from rollout_engine.events import (
    BanditConfig,
    ConfigChange,
    ControlState,
    Decision,
    Guardrail,
    GuardrailState,
    KillSwitch,
    LogMessage,
    Metric,
    Outcome,
    Resume,
    ShadowResult,
    Tick,
    encode,
    encode_batch,
    subjects,
)

T0 = 1_700_000_000_000
NAMES = registry.names()
POLICY = {"guards": [{"name": "lat", "metric": "latency_ms", "threshold": 200.0, "min_samples": 3}],
          "staged": {"steps": [25, 0]}, "hysteresis": {"hold_down_ms": 1_000}}
BANDIT = {"arms": ["baseline", "candidate"], "min_samples": 2, "reward_wait_s": 3.0}
VERIFICATION = {"retry_interval_s": 1.0, "max_attempts": 2}


def _control(seq: int, rollout: str, rng: random.Random, t: int) -> LogMessage:
    before = ControlState(canary_pct=50.0, config_version=seq)
    kind = {1: 3, 2: 0}.get(seq, rng.randrange(4))  # the log opens with a bandit config, then a policy
    common = {"id": f"c{seq}", "rollout": rollout, "time_ms": t, "producer": "api", "actor": "op", "reason": "x"}
    if kind == 0:
        event = ConfigChange(before=before, after=ControlState(canary_pct=50.0, policy_version=1), policy=POLICY,
                             **common)
    elif kind == 1:
        event = KillSwitch(before=before, after=ControlState(kill_switch=True), **common)
    elif kind == 2:
        event = Resume(before=before, after=ControlState(canary_pct=50.0), **common)
    else:
        event = BanditConfig(id=f"c{seq}", rollout=rollout, time_ms=t, producer="cli", actor="op", reason="x",
                             bandit=BANDIT, verification=VERIFICATION)
        return LogMessage(seq, subjects.control(rollout, "bandit_config"), encode(event))
    return LogMessage(seq, subjects.for_event(event), encode(event))


def _producer(seq: int, rollout: str, rng: random.Random, t: int) -> LogMessage:
    batch = []
    kind = rng.randrange(3)  # a message carries one kind: its subject says which
    for i in range(rng.randrange(1, 6)):
        common = {"id": f"e{seq}-{i}", "rollout": rollout, "time_ms": t + rng.randrange(-900, 50), "producer": "p"}
        variant = rng.choice(("baseline", "candidate"))
        if kind == 0:
            shadow = ShadowResult(variant="x", diff={"agent": rng.random() < 0.5}) if rng.random() < 0.3 else None
            batch.append(Decision(unit="u", variant=variant, reason=rng.choice(("canary", "bandit", "default")),
                                  canary_pct=50.0, config_version=1, propensity=0.5, shadow=shadow,
                                  dry_run=rng.random() < 0.5, **common))
        elif kind == 1:
            batch.append(Outcome(decision_id=f"e{seq - rng.randrange(1, 4)}-{rng.randrange(3)}", variant=variant,
                                 verdict=rng.choice(("win", "loss", "inconclusive")), quality=rng.gauss(90, 3),
                                 confidence=rng.choice((None, 0.3, 0.95)), **common))
        else:
            batch.append(Metric(variant=variant, name="latency_ms", value=rng.lognormvariate(5, 1), **common))
    return LogMessage(seq, subjects.event(rollout, ("decision", "outcome", "metric")[kind]), encode_batch(batch))


def make_log(n_messages: int = 70, seed: int = 4) -> list[LogMessage]:
    """Producer batches, ticks, every control command, bandit configs, guardrails, bad messages."""
    rng = random.Random(seed)
    out: list[LogMessage] = []
    for seq in range(1, n_messages + 1):
        t = T0 + seq * 400
        roll, rollout = rng.random(), rng.choice(("a", "b"))
        if roll < 0.04:
            out.append(LogMessage(seq, subjects.event("a", "metric"), b"\xc1garbage"))
        elif roll < 0.06:  # a forged kill on a producer subject: the subject says it is no kill
            forged = KillSwitch(id=f"f{seq}", rollout=rollout, time_ms=t, producer="p", actor="p", reason="forged",
                                before=ControlState(), after=ControlState(kill_switch=True))
            out.append(LogMessage(seq, subjects.event(rollout, "metric"), encode(forged)))
        elif roll < 0.18:
            out.append(LogMessage(seq, subjects.TICK, encode(Tick(id=f"t{seq}", time_ms=t, producer="engine"))))
        elif roll < 0.26 or seq <= 2:
            out.append(_control(seq, rollout, rng, t))
        elif roll < 0.28:
            guard = Guardrail(id=f"g{seq}", rollout=rollout, time_ms=t, producer="op", actor="op", reason="x",
                              before=GuardrailState(), after=GuardrailState(mode_default="normal"))
            out.append(LogMessage(seq, subjects.control(rollout, "guardrail"), encode(guard)))
        else:
            out.append(_producer(seq, rollout, rng, t))
    return out


LOG = make_log()


def _clean(name: str) -> tuple[str, set[str], set[str]]:
    """Every message folded once, in order: the state digest, the ids it publishes, the kinds it emits."""
    folder = Folder(registry.build(name).projection)
    rows: set[str] = set()
    kinds: set[str] = set()
    for message in LOG:
        result = folder.fold_batch([message])
        rows |= {row.id for row in Folder.outbox_of(result)}
        kinds |= {type(event).__name__ for event in result.emitted}
    return folder.projection.digest(), rows, kinds


CLEAN = {name: _clean(name) for name in NAMES}


def test_the_log_exercises_every_consumer() -> None:
    """Each consumer changes state and publishes something, so the property below has teeth."""
    for name in NAMES:
        digest, rows, _kinds = CLEAN[name]
        assert digest != registry.build(name).projection.digest(), f"{name} folded nothing"
        assert rows, f"{name} published nothing (not even a dead letter)"
    assert {"KillSwitch", "ConfigChange"} <= CLEAN["rollback"][2], CLEAN["rollback"][2]
    assert {"RecheckRequest", "RecheckClosed"} <= CLEAN["verification"][2], CLEAN["verification"][2]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_batching_redelivery_gap_and_crash_gives_the_one_at_a_time_state(name: str, data: st.DataObject) -> None:
    last = len(LOG)
    stored_seq, stored_parts = 0, {}
    published: set[str] = set()
    folder = Folder(registry.build(name).projection)
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
            restarted = registry.build(name).projection
            restarted.restore_parts(stored_parts)
            folder = Folder(restarted, stored_seq)
    assert folder.seq == last
    assert folder.projection.digest() == CLEAN[name][0]
    assert published == CLEAN[name][1]


@pytest.mark.parametrize("name", NAMES)
def test_every_projection_holds_its_state_in_the_one_base(name: str) -> None:
    projection = registry.build(name).projection
    assert isinstance(projection, RolloutProjection) and isinstance(projection, Projection)
    for message in LOG:
        fold_message(message, [projection])
    snapshot = projection.snapshot()
    assert projection.digest() == digest_of(snapshot)
    again = registry.build(name).projection
    again.restore(snapshot)
    assert again.snapshot() == snapshot
    parts = registry.build(name).projection
    parts.restore_parts(projection.all_parts())
    assert parts.digest() == projection.digest()
    assert set(projection.rollouts) <= {"a", "b"}, "per-rollout state is keyed by rollout id"


ENGINE_ONLY = [name for name in NAMES if not registry.build(name).projection.reads_events]


def test_some_projections_fold_only_the_engine_messages() -> None:
    assert set(ENGINE_ONLY) == {"control", "notifier"}


@pytest.mark.parametrize("name", ENGINE_ONLY)
def test_a_projection_reading_no_producer_event_ignores_every_one(name: str) -> None:
    """The one fold skips producer messages for these projections: exact only if applying
    every producer event of the log would have changed nothing and emitted nothing."""
    skipped = registry.build(name).projection
    emitted_skipping = [e.id for m in LOG for e in fold_message(m, [skipped])[0].emitted]
    applied = registry.build(name).projection
    emitted_applying = []
    for message in LOG:
        events, _failed = read_message(message)
        emitted_applying += [e.id for e in fold_events(applied, events, message.seq)[0]]
    assert applied.snapshot() == skipped.snapshot()
    assert emitted_applying == emitted_skipping
