"""The escalation preset's detect -> escalate -> fix loop: a second breach arms the flag, the
fix's promotion clears it, and so does an operator with a reason."""

from __future__ import annotations

from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, resume, runs
from rollout_engine.events import Escalation, transitions
from rollout_engine.events.ids import new_event_id
from tests.unit.test_rollback_projection import fold, kills

R = "checkout-v2"
BAD = Profile(quality=80.0)


def _armed_after_two_kills() -> tuple[RollbackProjection, list]:
    p = RollbackProjection()
    out = fold(p, [policy_change(R, {"preset": "escalation"})])
    out += fold(p, runs(R, 60, candidate=BAD), start=100)
    out += fold(p, [resume(R, p.rollouts[R].control, 5.0, time_ms=T0 + 10_000)], start=1_000)
    assert p.status(R)["escalations"] == []  # one breach: the kill handles it
    out += fold(p, runs(R, 700, canary_pct=5.0, candidate=BAD, t0=T0 + 10_001), start=2_000)
    assert len(kills(out)) == 2
    [armed] = [e for e in out if isinstance(e, Escalation)]
    assert armed.state == "armed" and armed.trigger == "quality" and armed.count == 2
    assert armed.expires_ms == armed.time_ms + 7 * 86_400_000
    return p, out


def test_the_fix_promoted_clears_the_flag() -> None:
    p, _ = _armed_after_two_kills()
    t = T0 + 60_000
    fixed = resume(R, p.rollouts[R].control, 5.0, time_ms=t)
    assert fold(p, [fixed], start=10_000) == []  # a re-enable is not a promotion
    assert p.status(R)["escalations"] == ["quality"]
    promote = transitions.config_command(p.rollouts[R].control, canary_pct=10.0, id=new_event_id(t + 1), rollout=R,
                                         time_ms=t + 1, producer="api", actor="alice", reason="fix holds",
                                         action="promote")
    [cleared] = fold(p, [promote], start=11_000)
    assert isinstance(cleared, Escalation) and cleared.state == "expired" and cleared.trigger == "quality"
    assert cleared.reason == "cleared: candidate promoted to 10% by alice" and cleared.cause_id == promote.id
    assert p.status(R)["escalations"] == []


def test_an_operator_clears_the_flag_with_a_reason() -> None:
    p, _ = _armed_after_two_kills()
    by_hand = Escalation(id=new_event_id(T0 + 60_000), rollout=R, time_ms=T0 + 60_000, producer="api",
                         actor="alice", reason="cleared by hand: root cause fixed upstream", trigger="quality",
                         state="expired")
    assert fold(p, [by_hand], start=10_000) == []
    assert p.status(R)["escalations"] == []
    assert p.rollouts[R].escalation.history == {}  # the loop starts again


def test_steering_and_escalation_presets_carry_their_numbers() -> None:
    from rollout_engine.consumers.rollback.policy import load_policy

    steering = load_policy({"preset": "steering"})
    h = steering.hysteresis
    assert steering.dry_run  # a dry run until switched live
    assert (h.sustain_ms, h.recovery_sustain_ms, h.hold_down_ms) == (2_000, 3_000, 30_000)
    assert (h.max_toggles, h.flap_window_ms, h.penalty_ms) == (4, 300_000, 60_000)
    [quality] = [g for g in steering.all_guards() if g.name == "quality"]
    assert quality.recovery < quality.threshold and quality.penalty_threshold_add == 15.0
    escalation = load_policy({"preset": "escalation"}).escalation
    assert (escalation.threshold, escalation.window_ms, escalation.ttl_ms) == (2, 86_400_000, 7 * 86_400_000)
