"""The rollback projection as a pure fold: commands, explanations, determinism, dry-run."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from rollout_engine.consumers.projection import Projection, digest_of
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, resume, runs
from rollout_engine.events import (
    ConfigChange,
    Escalation,
    Event,
    KillSwitch,
    Tick,
    WouldKill,
    command_id,
    encode,
)

R = "checkout-v2"
BAD_QUALITY = Profile(quality=82.0)


def fold(p: RollbackProjection, events: Iterable[Event], start: int = 1) -> list[Event]:
    """Apply events in log order; emitted commands are appended to the log right after their cause."""
    emitted: list[Event] = []
    seq = start
    for event in events:
        out = p.apply(event, seq)
        seq += 1
        for command in out:
            emitted.append(command)
            p.apply(command, seq)  # the command comes back through the log
            seq += 1
    return emitted


def kills(events: list[Event]) -> list[KillSwitch]:
    return [e for e in events if isinstance(e, KillSwitch)]


def tick(t: int) -> Tick:
    return Tick(id=f"tick-{t}", time_ms=t, producer="engine")


def test_is_a_projection() -> None:
    assert isinstance(RollbackProjection(), Projection)


def test_quality_regression_kills_with_seed_001_explanation() -> None:
    p = RollbackProjection()
    out = fold(p, runs(R, 100, canary_pct=50, candidate=BAD_QUALITY))
    [kill] = kills(out)
    assert kill.after.kill_switch and kill.after.canary_pct == 0.0 and not kill.before.kill_switch
    assert kill.reason.startswith("quality (baseline: 95.0, candidate: 82.0, drop: 13.0)")
    assert kill.reason.endswith("[policy default v0]")
    breach = kill.breaches[0]
    assert (breach.guard, breach.observed, breach.threshold, breach.baseline) == ("quality", 13.0, 5.0, 95.0)
    assert breach.candidate_n == 30 and breach.baseline_n >= 30
    assert kill.id == command_id("kill", R, kill.cause_id)
    assert p.rollouts[R].control.kill_switch


def test_latency_regression_reason_format() -> None:
    out = fold(RollbackProjection(), runs(R, 100, candidate=Profile(latency_ms=1850.0)))
    [kill] = kills(out)
    assert kill.reason.startswith("latency (candidate p95: 1850ms > 1600ms)")


def test_exactly_at_thresholds_does_not_kill() -> None:
    at = Profile(quality=90.0, latency_ms=1600.0, cost_cents=3.0)
    assert fold(RollbackProjection(), runs(R, 300, candidate=at)) == []


def test_below_min_samples_is_inconclusive_not_failure() -> None:
    p = RollbackProjection()
    assert fold(p, runs(R, 58, candidate=Profile(quality=10.0, latency_ms=9000.0))) == []  # 29 candidate runs
    assert kills(fold(p, runs(R, 2, candidate=Profile(quality=10.0), start=58)))


def test_replay_of_the_same_log_gives_identical_command_bytes_and_state() -> None:
    log = [policy_change(R, {"name": "strict", "thresholds": {"max_cost_cents": 2.5}})]
    log += runs(R, 120, candidate=Profile(cost_cents=2.9, quality=93.0))
    first, second = RollbackProjection(), RollbackProjection()
    a, b = fold(first, log), fold(second, log)
    assert a and [encode(x) for x in a] == [encode(x) for x in b]
    assert digest_of(first.snapshot()) == digest_of(second.snapshot())


def test_restore_mid_log_continues_identically() -> None:
    log = runs(R, 200, candidate=Profile(latency_ms=1700.0))
    whole = fold(RollbackProjection(), log)
    head = RollbackProjection()
    fold(head, log[:40])
    resumed = RollbackProjection()
    resumed.restore(head.snapshot())
    assert resumed.snapshot() == head.snapshot()
    assert [encode(x) for x in fold(resumed, log[40:], start=41)] == [encode(x) for x in whole]


def test_manual_reenable_at_5_percent_with_healthy_data_does_not_retrigger() -> None:
    p = RollbackProjection()
    [kill] = kills(fold(p, runs(R, 100, candidate=BAD_QUALITY)))
    t = T0 + 2_000
    again = fold(p, [resume(R, kill.after, 5.0, time_ms=t), *runs(R, 2_000, canary_pct=5.0, t0=t + 1),
                     *(tick(t + 250 * i) for i in range(200))])
    assert again == []
    assert p.rollouts[R].control.canary_pct == 5.0 and not p.rollouts[R].control.kill_switch


def test_reenable_with_the_regression_still_there_kills_again_on_new_evidence() -> None:
    p = RollbackProjection()
    [kill] = kills(fold(p, runs(R, 100, candidate=BAD_QUALITY)))
    t = T0 + 2_000
    again = kills(fold(p, [resume(R, kill.after, 50.0, time_ms=t), *runs(R, 100, candidate=BAD_QUALITY, t0=t + 1)]))
    assert len(again) == 1 and again[0].breaches[0].candidate_n == 30  # judged on post-resume data only


def test_sustain_ignores_a_short_breach() -> None:
    policy = {"hysteresis": {"sustain_ms": 5_000}}
    p = RollbackProjection()
    bad = runs(R, 100, candidate=Profile(latency_ms=2000.0))  # 1 s of bad data
    good = runs(R, 400, start=100)
    assert fold(p, [policy_change(R, policy), *bad, *good]) == []


def test_sustained_breach_kills_with_every_failing_guard() -> None:
    policy = {"hysteresis": {"sustain_ms": 500}}
    worst = Profile(quality=80.0, latency_ms=1850.0, cost_cents=4.0)
    [kill] = kills(fold(RollbackProjection(), [policy_change(R, policy), *runs(R, 200, candidate=worst)]))
    assert [b.guard for b in kill.breaches] == ["quality", "latency", "cost"]
    assert "cost (candidate: 4.0¢ > 3.0¢)" in kill.reason
    assert kill.reason.endswith("[policy default v1]") and kill.after.policy_version == 1


def test_dry_run_policy_records_would_kill_and_leaves_control_alone() -> None:
    shadow = {"name": "strict", "dry_run": True, "thresholds": {"max_quality_drop": 1.0}}
    p = RollbackProjection()
    out = fold(p, [policy_change(R, shadow), *runs(R, 200, candidate=Profile(quality=93.0))])
    [would] = out
    assert isinstance(would, WouldKill) and would.policy_name == "strict" and would.policy_version == 1
    assert would.reason.startswith("quality (baseline: 95.0, candidate: 93.0, drop: 2.0)")
    assert not p.rollouts[R].control.kill_switch


def test_srm_is_its_own_breach_type() -> None:
    from rollout_engine.events import Decision

    p = RollbackProjection()
    skewed = [Decision(id=f"d{i}", rollout=R, time_ms=T0 + i, producer="sim", unit=f"u{i}",
                       variant="candidate" if i % 5 == 0 else "baseline",
                       reason="canary" if i % 5 == 0 else "default", canary_pct=5.0, config_version=1,
                       propensity=0.05) for i in range(400)]
    [kill] = kills(fold(p, skewed))
    assert kill.breaches[0].type == "srm" and kill.breaches[0].p_value is not None
    assert kill.breaches[0].p_value < 0.001 and kill.reason.startswith("srm (candidate share: 20.0% vs configured 5.0%")


def test_staged_rollback_steps_down_every_hold_down_then_kills() -> None:
    policy = {"staged": {"steps": [25, 0]}, "hysteresis": {"hold_down_ms": 1_000}}
    start = policy_change(R, policy, canary_pct=50.0)
    out = fold(RollbackProjection(), [start, *runs(R, 400, candidate=Profile(latency_ms=1900.0))])
    moves = [e for e in out if isinstance(e, ConfigChange | KillSwitch)]
    assert isinstance(moves[0], ConfigChange) and moves[0].after.canary_pct == 25.0
    assert isinstance(moves[1], KillSwitch) and moves[1].time_ms - moves[0].time_ms >= 1_000


def test_progression_moves_up_after_healthy_intervals_and_extends_on_few_samples() -> None:
    policy = {"progression": {"enabled": True, "interval_ms": 1_000, "healthy_intervals": 2, "min_samples": 20}}
    p = RollbackProjection()
    out = fold(p, [policy_change(R, policy, canary_pct=5.0), *runs(R, 4_000, canary_pct=5.0)])
    moves = [e for e in out if isinstance(e, ConfigChange)]
    # 5% of 100 runs/s = 5 candidate samples a second: an interval needs 4 s of data, so
    # the step is extended instead of moving after 2 s
    assert moves and moves[0].after.canary_pct == 10.0
    assert moves[0].time_ms - T0 >= 4 * 1_000


def test_escalation_arms_after_three_breaches_and_expires_on_ticks() -> None:
    p = RollbackProjection()
    out: list[Event] = []
    t = T0
    for _ in range(3):
        out += fold(p, runs(R, 100, candidate=BAD_QUALITY, t0=t))
        t += 10_000
        kill = kills(out)[-1]
        out += fold(p, [resume(R, kill.after, 50.0, time_ms=t)])
        t += 1
    flags = [e for e in out if isinstance(e, Escalation)]
    assert [(f.trigger, f.state, f.count) for f in flags] == [("quality", "armed", 3)]
    expired = fold(p, [tick(flags[0].expires_ms)])
    assert [(e.trigger, e.state) for e in expired if isinstance(e, Escalation)] == [("quality", "expired")]


def test_bad_policy_is_rejected_and_the_last_good_one_stays() -> None:
    p = RollbackProjection()
    fold(p, [policy_change(R, {"thresholds": {"max_quality_drop": 1.0}})])
    fold(p, [policy_change(R, {"thresholds": {"max_quality_drop": "lots"}}, time_ms=T0)])
    state = p.rollouts[R]
    assert state.live.policy.thresholds.max_quality_drop == 1.0
    assert "policy.thresholds.max_quality_drop" in state.policy_error


def test_sequential_guard_needs_significance() -> None:
    guard = {"name": "errors", "metric": "error", "aggregate": "rate", "mode": "increase", "threshold": 0.05,
             "test": "sequential", "min_samples": 30}
    from rollout_engine.events import Metric

    def errors(rate_b: float, rate_c: float, n: int) -> list[Event]:
        out: list[Event] = []
        for i in range(n):
            for variant, rate in (("baseline", rate_b), ("candidate", rate_c)):
                value = 1.0 if (i * rate) % 1 + rate >= 1 else 0.0
                out.append(Metric(id=f"m{variant[0]}{i}", rollout=R, time_ms=T0 + i * 10, producer="sim",
                                  variant=variant, name="error", value=value))
        return out

    policy = policy_change(R, {"guards": [guard], "last_n": 1000})
    assert kills(fold(RollbackProjection(), [policy, *errors(0.0, 0.5, 200)]))
    # 10% vs 0% over 35 samples crosses 5 points but is not yet significant: inconclusive, no kill
    assert fold(RollbackProjection(), [policy, *errors(0.0, 0.1, 35)]) == []


def test_inconclusive_limit_raises_an_escalation() -> None:
    policy = {"hysteresis": {"inconclusive_limit": 3, "check_interval_ms": 1_000}, "srm": {"enabled": False}}
    out = fold(RollbackProjection(), [policy_change(R, policy), *runs(R, 10, canary_pct=5.0),
                                      *(tick(T0 + 1_000 * i) for i in range(6))])
    triggers = sorted(e.trigger for e in out if isinstance(e, Escalation))
    assert triggers == ["inconclusive-cost", "inconclusive-latency", "inconclusive-quality"]


def test_snapshot_is_canonical_msgpack() -> None:
    p = RollbackProjection()
    fold(p, runs(R, 50) + runs("other", 50))
    snap = p.snapshot()
    assert msgspec.msgpack.decode(snap) is not None and p.snapshot() == snap


def test_incremental_parts_restore_to_the_same_state_and_commands() -> None:
    log = runs(R, 150, candidate=Profile(cost_cents=3.5)) + runs("quiet", 40)
    whole = fold(RollbackProjection(), log)
    p = RollbackProjection()
    stored: dict[str, bytes] = {}
    for start in range(0, 100, 10):  # the runtime commits changed parts per batch
        fold(p, log[start:start + 10], start=start + 1)
        stored.update(p.changed_parts())
    assert stored == p.all_parts()
    restored = RollbackProjection()
    restored.restore_parts(stored)
    assert restored.snapshot() == p.snapshot()
    assert [encode(x) for x in fold(restored, log[100:], start=101)] == [encode(x) for x in whole]


def test_status_explains_the_rollout_as_plain_data() -> None:
    p = RollbackProjection()
    fold(p, runs(R, 100, candidate=BAD_QUALITY))
    status = p.status(R)
    assert status["kill_switch"] is True and status["kills"] == 1
    assert status["policy"] == {"name": "default", "version": 0}
    assert status["guards"]["quality"]["state"] == "alarm"
    assert msgspec.json.encode(status)


def test_dry_run_comparison_lines_up_would_kills_with_kills() -> None:
    from rollout_engine.consumers.rollback.compare import compare_dry_run

    shadow = {"name": "strict", "dry_run": True, "thresholds": {"max_quality_drop": 2.0}}
    log: list[Event] = [policy_change(R, shadow)]
    for step, quality in enumerate((95.0, 93.0, 91.0, 89.0, 87.0)):
        log += runs(R, 200, candidate=Profile(quality=quality), start=200 * step)
    log += [policy_change("calm", shadow), *runs("calm", 200, candidate=Profile(quality=92.0))]
    out = fold(RollbackProjection(), log)
    report = compare_dry_run(out)
    checkout, calm = report[R], report["calm"]
    assert (checkout.agreed, checkout.shadow_only, checkout.live_only) == (1, 0, 0)
    assert checkout.lead_ms[0] > 0 and checkout.shadow_policies == ["strict v1"]  # the shadow was earlier
    assert (calm.agreed, calm.shadow_only, calm.live_only) == (0, 1, 0)  # strict alone would have killed


def test_ticks_touch_only_rollouts_in_motion() -> None:
    p = RollbackProjection()
    for i in range(50):
        fold(p, runs(f"idle-{i}", 10))
    fold(p, [policy_change(R, {"hysteresis": {"sustain_ms": 5_000}}),
             *runs(R, 100, candidate=Profile(latency_ms=2_000.0))])  # pending, waiting on sustain
    p.changed_parts()
    assert fold(p, [tick(T0 + 2_000)]) == []
    assert [key for key in p.changed_parts() if key] == [R]  # "" is the engine clock (the last tick)
    [kill] = kills(fold(p, [tick(T0 + 7_000)]))
    assert kill.cause_id == f"tick-{T0 + 7_000}"


def test_progression_waits_out_the_hold_down_after_a_kill() -> None:
    policy = {"progression": {"enabled": True, "interval_ms": 500, "healthy_intervals": 1, "min_samples": 5},
              "hysteresis": {"hold_down_ms": 10_000}}
    p = RollbackProjection()
    [kill] = kills(fold(p, [policy_change(R, policy, canary_pct=50.0), *runs(R, 100, candidate=BAD_QUALITY)]))
    t = kill.time_ms + 1
    out = fold(p, [resume(R, kill.after, 5.0, time_ms=t), *runs(R, 3_000, canary_pct=5.0, t0=t + 1)])
    moves = [e for e in out if isinstance(e, ConfigChange)]
    assert moves and moves[0].after.canary_pct == 10.0
    assert moves[0].time_ms - kill.time_ms >= 10_000


def _pause(before, paused: bool, time_ms: int) -> ConfigChange:
    after = msgspec.structs.replace(before, paused=paused, config_version=before.config_version + 1)
    return ConfigChange(id=f"pause-{time_ms}", rollout=R, time_ms=time_ms, producer="api", actor="alice",
                        reason="hold", before=before, after=after, action="pause" if paused else "unpause")


def test_pause_stops_automatic_progression_by_event_order_and_unpause_restarts_it() -> None:
    policy = {"progression": {"enabled": True, "interval_ms": 500, "healthy_intervals": 1, "min_samples": 5}}
    p = RollbackProjection()
    start = policy_change(R, policy, canary_pct=50.0)
    fold(p, [start])
    paused_at = T0
    out = fold(p, [_pause(p.rollouts[R].control, True, paused_at), *runs(R, 2_000, canary_pct=50.0)])
    assert [e for e in out if isinstance(e, ConfigChange)] == []  # 20 s of healthy traffic, no move
    assert p.status(R)["paused"] is True
    t = T0 + 2_000 * 10
    out = fold(p, [_pause(p.rollouts[R].control, False, t), *runs(R, 200, canary_pct=50.0, t0=t + 1, start=2_000)])
    moves = [e for e in out if isinstance(e, ConfigChange)]
    assert moves and moves[0].after.canary_pct == 100.0 and moves[0].time_ms - t >= 500
    assert not moves[0].after.paused


def test_status_verdict_for_wait_healthy() -> None:
    p = RollbackProjection()
    fold(p, [policy_change(R, None)])
    assert p.status(R)["verdict"] == "idle"  # no candidate traffic asked for
    fold(p, [policy_change(R, None, before=p.rollouts[R].control, canary_pct=50.0), *runs(R, 20, canary_pct=50.0)])
    assert p.status(R)["verdict"] == "insufficient"  # 10 candidate decisions < min_samples 30
    fold(p, runs(R, 100, canary_pct=50.0, start=20))
    assert p.status(R)["verdict"] == "healthy"
    fold(p, runs(R, 100, canary_pct=50.0, candidate=BAD_QUALITY, start=120))
    assert p.status(R)["verdict"] == "killed"
