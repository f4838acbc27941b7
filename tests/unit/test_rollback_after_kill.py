"""After a kill the rollback fold judges on (status, recovery, flap history) and commands nothing."""

from __future__ import annotations

from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, resume, runs
from tests.unit.test_rollback_projection import fold, kills

R = "checkout-v2"
ALL_BAD = Profile(quality=80.0, latency_ms=2500.0, cost_cents=5.0)


def _judged(p: RollbackProjection) -> dict[str, str]:
    return {g: v["judged"] for g, v in p.status(R)["guards"].items()}


def test_a_three_guard_regression_kills_once_and_every_guard_shows_breaching() -> None:
    p = RollbackProjection()
    out = fold(p, runs(R, 60, candidate=ALL_BAD))  # the 30th candidate run: quality reaches 30 samples first
    [kill] = kills(out)
    assert [b.guard for b in kill.breaches] == ["quality"]
    assert "insufficient: latency 29/30, cost 29/30" in kill.reason and kill.reason.endswith("[policy default v0]")
    # the same run's latency and cost samples follow its outcome: judged on, they breach too
    three = {"quality": "breaching", "latency": "breaching", "cost": "breaching", "srm": "insufficient"}
    assert _judged(p) == three
    later = fold(p, runs(R, 40, candidate=ALL_BAD, start=60), start=1000)
    assert later == []  # never a second command while killed
    assert _judged(p) == three
    assert p.status(R)["verdict"] == "killed" and p.status(R)["recovered_ms"] == -1


def test_status_names_guards_no_sample_reached_as_insufficient() -> None:
    p = RollbackProjection()
    fold(p, runs(R, 10))
    guards = p.status(R)["guards"]
    assert {g: (v["judged"], v["n"], v["need"]) for g, v in guards.items()} == {
        "quality": ("insufficient", 5, 30), "latency": ("insufficient", 5, 30), "cost": ("insufficient", 5, 30),
        "srm": ("insufficient", 10, 200)}


def test_recovery_after_a_kill_follows_the_policy_recovery_rule() -> None:
    policy = {"last_n": 30, "hysteresis": {"hold_down_ms": 1_000, "recovery_sustain_ms": 2_000}}
    p = RollbackProjection()
    out = fold(p, [policy_change(R, policy), *runs(R, 60, candidate=Profile(quality=80.0))])
    assert len(kills(out)) == 1
    # in-flight candidate outcomes keep arriving after the kill, healthy now
    healthy = runs(R, 400, candidate=Profile(), start=60, t0=T0 + 2_000)
    assert fold(p, healthy[:240], start=1000) == []
    assert p.status(R)["guards"]["quality"]["state"] == "recovering" and p.status(R)["recovered_ms"] == -1
    assert fold(p, healthy[240:], start=2000) == []
    status = p.status(R)
    assert status["guards"]["quality"]["judged"] == "ok" and status["recovered_ms"] > 0
    assert status["kill_switch"] and status["verdict"] == "killed"  # recovery is reported, never acted on


def test_kill_resume_cycles_count_as_flapping() -> None:
    """Each kill is an alarm toggle and each resume lifting it a recovery toggle: more than
    max_toggles within the window start the flap penalty, however the toggles happened."""
    policy = {"hysteresis": {"max_toggles": 2, "flap_window_ms": 600_000, "penalty_ms": 60_000}}
    p = RollbackProjection()
    fold(p, [policy_change(R, policy)])
    t, start, killed = T0, 0, []
    for cycle in range(2):
        killed += kills(fold(p, runs(R, 60, candidate=Profile(quality=80.0), t0=t, start=start),
                             start=10_000 * (cycle + 1)))
        t, start = t + 10_000, start + 60
        fold(p, [resume(R, p.rollouts[R].control, 50.0, time_ms=t)], start=10_000 * (cycle + 1) + 5_000)
    # kill, resume, kill: the third toggle (> 2) starts the penalty, which runs into the new epoch
    assert len(killed) == 2
    assert p.status(R)["guards"]["quality"]["penalized"]
    assert p.rollouts[R].live.machines["quality"].penalty_until_ms == killed[1].time_ms + 60_000


def _decisions(policy: dict, dry: bool, traffic: list) -> list[tuple[str, list, str]]:
    """Fold one log with ``policy`` live, or as a dry run beside a live policy that never kills."""
    quiet = {"name": "quiet", "thresholds": {"max_quality_drop": -1, "max_latency_p95_ms": -1, "max_cost_cents": -1},
             "srm": {"enabled": False}}
    start = policy_change(R, quiet if dry else policy)
    log = [start, *([policy_change(R, {**policy, "dry_run": True}, before=start.after)] if dry else []),
           *traffic]
    out = fold(RollbackProjection(), log)
    assert len(out) == 1, out
    return [(c.cause_id, [(b.guard, b.observed, b.candidate_n, b.window) for b in c.breaches],
             c.reason.rsplit(" [", 1)[0]) for c in out]


def test_a_dry_run_policy_is_judged_on_its_own_windows_like_the_same_policy_live() -> None:
    for policy in ({"name": "small", "last_n": 10, "min_samples": 5, "thresholds": {"max_latency_p95_ms": 1000}},
                   {"name": "timed", "window_ms": 200, "min_samples": 5,
                    "thresholds": {"max_quality_drop": -1, "max_latency_p95_ms": -1, "max_cost_cents": -1},
                    "guards": [{"name": "slow", "metric": "latency_ms", "threshold": 1000, "window": "time"}]}):
        traffic = [*runs(R, 100), *runs(R, 60, candidate=Profile(latency_ms=1200.0), start=100)]
        live, dry = _decisions(policy, False, traffic), _decisions(policy, True, traffic)
        assert live == dry, policy["name"]
    assert live[0][1][0][2] < 30  # the time window's own size, not the live policy's last 100


def test_a_dry_run_policy_own_fold_survives_a_restore() -> None:
    from rollout_engine.events import encode

    quiet = policy_change(R, {"name": "quiet", "thresholds": {"max_quality_drop": -1, "max_latency_p95_ms": -1,
                                                               "max_cost_cents": -1}})
    shadow = policy_change(R, {"name": "small", "dry_run": True, "last_n": 10, "min_samples": 5,
                               "thresholds": {"max_latency_p95_ms": 1000}}, before=quiet.after)
    log = [quiet, shadow, *runs(R, 100), *runs(R, 60, candidate=Profile(latency_ms=1200.0), start=100)]
    whole = fold(RollbackProjection(), log)
    head = RollbackProjection()
    fold(head, log[:120])
    assert head.rollouts[R].shadow_shape == [10, 300_000, 8, 0]
    resumed = RollbackProjection()
    resumed.restore(head.snapshot())
    assert resumed.snapshot() == head.snapshot()
    assert [encode(x) for x in fold(resumed, log[120:], start=121)] == [encode(x) for x in whole] != []
