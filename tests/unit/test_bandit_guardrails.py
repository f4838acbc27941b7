"""The guardrails as events: normal-mode canary limits, loss cooldown forcing safe
mode, switches that disable the bandit or the executor."""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.guardrails import decide_mode
from rollout_engine.engine.sdk.choice import BanditChooser
from rollout_engine.events import Guardrail, GuardrailState, command_id
from tests.unit.test_bandit import T0, Log, R, config, decision, outcome, tick

MIN = 60_000


def chooser_for(p: BanditProjection) -> BanditChooser:
    chooser = BanditChooser()
    chooser.update(msgspec.msgpack.encode(p.view(R)))
    return chooser


def operator(t: int, after: GuardrailState, gid: str = "g-op") -> Guardrail:
    return Guardrail(
        id=gid, rollout=R, time_ms=t, producer="cli", actor="alice", reason="runbook", before=GuardrailState(), after=after,
    )


def test_a_loss_in_normal_mode_starts_a_cooldown_that_forces_safe_until_it_expires() -> None:
    log = Log(BanditProjection())
    log(config())
    log(operator(T0, GuardrailState(normal_max_per_hour=10)))
    log(decision(1, "a", T0, dry_run=False))
    emitted = log(outcome(1, "a", T0 + MIN, "loss"))
    assert len(emitted) == 1
    cooldown = emitted[0]
    assert isinstance(cooldown, Guardrail)
    assert cooldown.id == command_id("cooldown", R, f"o1-{T0 + MIN}")
    assert cooldown.after.cooldown_until_ms == T0 + MIN + 1_800_000
    assert cooldown.before.cooldown_until_ms == 0 and cooldown.after.normal_max_per_hour == 10 and cooldown.cause_id == f"o1-{T0 + MIN}"

    chooser = chooser_for(log.projection)
    during = chooser.choose(R, "u", decision_id="x1", time_ms=T0 + 20 * MIN, mode="normal", priority=1.0)
    assert (during.mode, during.reason, during.execute) == ("safe", "forced_safe", True)
    assert "cooldown" in during.why
    assert BanditChooser.decision(during, producer="svc").dry_run is True
    just_before = chooser.choose(R, "u", decision_id="x2", time_ms=T0 + MIN + 1_799_999, mode="normal", priority=1.0)
    assert just_before.mode == "safe"
    after = chooser.choose(R, "u", decision_id="x3", time_ms=T0 + MIN + 1_800_000, mode="normal", priority=1.0)
    assert (after.mode, after.reason) == ("normal", "bandit")


def test_echo_of_our_own_cooldown_is_ignored_and_a_loss_in_safe_mode_starts_none() -> None:
    log = Log(BanditProjection())
    log(config())
    log(decision(1, "a", T0, dry_run=True))
    assert log(outcome(1, "a", T0 + 1, "loss")) == []
    log(decision(2, "a", T0 + 2, dry_run=False))
    [cooldown] = log(outcome(2, "a", T0 + 3, "loss"))
    before = log.projection.snapshot()
    log.projection.apply(cooldown, 99)  # the echo read back from the log
    assert log.projection.rollouts[R].guardrail == cooldown.after
    assert log.projection.snapshot() == before


def test_a_late_loss_in_normal_mode_still_starts_the_cooldown() -> None:
    log = Log(BanditProjection())
    log(config())
    log(decision(1, "a", T0, dry_run=False))
    log(tick(T0 + 11 * MIN))  # reward wait over: defaulted
    [cooldown] = log(outcome(1, "a", T0 + 12 * MIN, "loss"))
    assert cooldown.after.cooldown_until_ms == T0 + 12 * MIN + 1_800_000


def test_normal_mode_is_limited_per_hour_by_priority_and_by_risk() -> None:
    state = GuardrailState()
    ok = decide_mode(state, T0, [], requested="normal", priority=0.95, risk="low")
    assert ok.mode == "normal"
    assert decide_mode(state, T0, [], requested="normal", priority=0.5).why.startswith("priority")
    assert decide_mode(state, T0, [], requested="normal", priority=0.95, risk="high").why.startswith("risk")
    hour = decide_mode(state, T0 + 59 * MIN, [T0], requested="normal", priority=0.95)
    assert hour.mode == "safe" and hour.forced and "last hour" in hour.why
    assert decide_mode(state, T0 + 60 * MIN, [T0], requested="normal", priority=0.95).mode == "normal"
    assert decide_mode(state, T0, []).mode == "safe", "default mode is safe"


def test_max_per_hour_counts_published_and_local_normal_runs() -> None:
    log = Log(BanditProjection())
    log(config())
    chooser = chooser_for(log.projection)
    first = chooser.choose(R, "u", decision_id="n1", time_ms=T0, mode="normal", priority=0.95)
    second = chooser.choose(R, "u", decision_id="n2", time_ms=T0 + MIN, mode="normal", priority=0.95)
    assert (first.mode, second.mode, second.reason) == ("normal", "safe", "forced_safe")
    log(BanditChooser.decision(first, producer="svc"))
    other_process = chooser_for(log.projection)
    assert log.projection.view(R).normal_times == [T0]
    third = other_process.choose(R, "u", decision_id="n3", time_ms=T0 + 2 * MIN, mode="normal", priority=0.95)
    assert third.mode == "safe", "another SDK process sees the published normal run"


def test_operator_switches_disable_the_executor_and_lift_a_cooldown() -> None:
    log = Log(BanditProjection())
    log(config())
    log(operator(T0, GuardrailState(executor_enabled=False)))
    choice = chooser_for(log.projection).choose(R, "u", decision_id="e1", time_ms=T0 + 1, mode="normal", priority=1.0)
    assert (choice.execute, choice.mode, choice.why) == (False, "safe", "executor disabled")
    log(decision(1, "a", T0 + 2, dry_run=False))
    log(operator(T0 + 3, GuardrailState(), gid="g-on"))
    [cooldown] = log(outcome(1, "a", T0 + 4, "loss"))
    assert log.projection.rollouts[R].guardrail.cooldown_until_ms == cooldown.after.cooldown_until_ms
    log(operator(T0 + 5, GuardrailState(mode_default="normal", normal_max_per_hour=2), gid="g-lift"))
    choice = chooser_for(log.projection).choose(R, "u", decision_id="e2", time_ms=T0 + 6, priority=1.0)
    assert choice.mode == "normal", "the operator's after-state lifted the cooldown; default mode normal"
