"""Shortcuts of the rollback fold give the statuses the full computation gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.rollback import projection
from rollout_engine.consumers.rollback.evidence import StatsEvidence
from rollout_engine.consumers.rollback.guards import (
    GuardIndex,
    GuardPlan,
    evaluate_guard,
    evaluate_srm,
)
from rollout_engine.consumers.rollback.policy import Guard, Policy, SrmConfig, load_policy
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0
from rollout_engine.consumers.rollback.stats_tests import srm_clearly_fits, srm_room, srm_test
from rollout_engine.events import Decision, Metric, encode


@settings(max_examples=500, deadline=None)
@given(baseline=st.integers(0, 200_000), candidate=st.integers(0, 200_000),
       pct=st.sampled_from([1.0, 5.0, 20.0, 33.3, 50.0, 95.0, 99.0]),
       p_value=st.sampled_from([0.001, 0.01, 0.05, 1e-6]))
def test_a_clear_srm_pass_is_a_pass_of_the_full_test(baseline, candidate, pct, p_value) -> None:
    if srm_clearly_fits(baseline, candidate, pct, p_value):
        test = srm_test(baseline, candidate, pct)
        assert test.p_value is not None and test.p_value >= p_value
    cfg = SrmConfig(p_value=p_value, min_decisions=1)
    screened, full = evaluate_srm(cfg, baseline, candidate, pct, True), evaluate_srm(cfg, baseline, candidate, pct)
    assert (screened.status, screened.why, screened.need) == (full.status, full.why, full.need)


def test_an_srm_split_right_at_the_boundary_is_not_screened() -> None:
    # 1,000 decisions at 50%: chi2 = (c - 500)^2 / 250; p < 0.001 from |c - 500| >= 53
    assert srm_clearly_fits(500, 500, 50.0, 0.001)
    assert not srm_clearly_fits(447, 553, 50.0, 0.001)
    assert srm_test(447, 553, 50.0).p_value < 0.001


def test_a_sample_re_judges_only_the_guards_on_its_metric() -> None:
    policy = load_policy({"guards": [{"name": "p99", "metric": "latency_ms", "aggregate": "p99", "threshold": 9.0},
                                     {"name": "rise", "metric": "latency_ms", "mode": "increase", "threshold": 1.0}]})
    index = GuardIndex()
    assert [g.name for g in index.on(policy, "latency_ms", False)] == ["latency", "p99", "rise"]
    assert [g.name for g in index.on(policy, "latency_ms", True)] == ["rise"]
    assert [g.name for g in index.on(policy, "quality", True)] == ["quality"]
    assert index.on(policy, "error", False) == []
    assert [g.name for g in index.on(policy, None, False)] == [g.name for g in policy.all_guards()]


_SCREENED = [
    Guard(name="mean", metric="m", threshold=10.0),
    Guard(name="ge", metric="m", threshold=10.0, comparator="ge", recovery_threshold=8.0),
    Guard(name="p95", metric="m", aggregate="p95", threshold=10.0, penalty_threshold_add=2.0),
    Guard(name="p50lt", metric="m", aggregate="p50", comparator="lt", threshold=-3.0, recovery_threshold=0.0),
    Guard(name="drop", metric="m", mode="decrease", threshold=0.0, min_baseline_samples=2,
          penalty_threshold_add=1.5),
    Guard(name="rise", metric="m", mode="increase", aggregate="p99", threshold=2.0, recovery_threshold=1.0,
          test="sequential"),
    Guard(name="ratio", metric="m", mode="ratio", threshold=1.2, comparator="ge"),
    Guard(name="ratiole", metric="m", mode="ratio", aggregate="p50", threshold=0.5, comparator="le",
          min_samples=5),
    Guard(name="timed", metric="m", window="time", threshold=10.0),
]
_SCREEN_POLICY = Policy(min_samples=3, min_baseline_samples=2, guards=_SCREENED[4:])


@settings(max_examples=300, deadline=None)
@given(samples=st.lists(st.tuples(st.booleans(), st.one_of(st.sampled_from([10.0, 0.0, -0.0, -3.0, 8.0, 12.0]),
                                                         st.floats(-1e3, 1e3, allow_nan=False))),
                        min_size=1, max_size=60),
       last_n=st.integers(1, 10), penalized=st.booleans())
def test_the_pass_screen_agrees_with_the_full_evaluation(samples, last_n, penalized) -> None:
    """``StatsEvidence.passes`` is True exactly when ``evaluate_guard`` passes (last-N
    guards; other windows are never screened)."""
    stats = CanaryStats(last_n=last_n, window_ms=1_000, time_cap=1_000)
    index = GuardIndex()
    for seq, (candidate, value) in enumerate(samples, 1):
        stats.apply(Metric(id=f"{seq:016x}", rollout="r", time_ms=1_000 + seq, producer="p",
                           variant="candidate" if candidate else "baseline", name="m", value=value), seq)
        evidence = StatsEvidence(stats, "r")
        for plan in index.plans(_SCREEN_POLICY, "m", False) + [GuardPlan(g, _SCREEN_POLICY) for g in _SCREENED[:4]]:
            full = evaluate_guard(plan.guard, _SCREEN_POLICY, evidence, ("baseline", "candidate"), penalized=penalized)
            screened = evidence.passes(plan, ("baseline", "candidate"), penalized)
            assert screened == (full.status == "pass" and plan.last_n), (plan.name, full)


@settings(max_examples=500, deadline=None)
@given(baseline=st.integers(0, 100_000), candidate=st.integers(0, 100_000),
       pct=st.sampled_from([1.0, 5.0, 20.0, 33.3, 50.0, 95.0, 99.0]),
       p_value=st.sampled_from([0.001, 0.01, 0.05, 1e-6]), to_candidate=st.floats(0.0, 1.0), used=st.floats(0.0, 1.0))
def test_every_split_within_the_srm_room_clearly_fits(baseline, candidate, pct, p_value, to_candidate, used) -> None:
    """srm_room promises that any mix of that many more decisions still clearly fits:
    checked at the extremes (all to one side) and at a random mix and length."""
    room = srm_room(baseline, candidate, pct, p_value)
    if room < 0:
        return
    assert srm_clearly_fits(baseline, candidate, pct, p_value)
    k = round(room * used)
    j = round(k * to_candidate)
    for more_b, more_c in ((room, 0), (0, room), (k - j, j)):
        assert srm_clearly_fits(baseline + more_b, candidate + more_c, pct, p_value), (more_b, more_c)


def test_the_srm_room_is_large_on_a_fitting_split_and_none_on_a_mismatch() -> None:
    assert srm_room(500, 500, 50.0, 0.001) == 51  # |d| = 0: sqrt(0.999 * 10.83 * 250) = 52.0, less one
    assert srm_room(447, 553, 50.0, 0.001) == -1  # the boundary case above: no room
    assert srm_room(2, 2, 50.0, 0.001) == -1  # expected counts under 5: the test does not apply


def _decisions(n: int, drift_at: int, share_after: float, seed: int = 3) -> list[Decision]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        share = 0.5 if i < drift_at else share_after
        out.append(Decision(id=f"d{i:07d}", rollout="split", time_ms=T0 + i, producer="svc", unit=f"u{i}",
                            variant="candidate" if rng.random() < share else "baseline", reason="canary",
                            canary_pct=50.0, config_version=1, propensity=0.5))
    return out


@pytest.mark.parametrize(("share_after", "seed"), [(0.56, 3), (0.45, 4), (0.5, 5)])
def test_the_srm_room_skips_no_judgement_that_matters(monkeypatch, share_after, seed) -> None:
    """A split that drifts into a mismatch after 3,000 decisions: the fold with the room
    (skipping the judgement of decisions it covers) and the fold judging every decision
    give the same commands, at the same decision, and the same status throughout."""
    log = _decisions(8_000, 3_000, share_after, seed)

    def judged() -> tuple[list[bytes], list[str]]:
        fold, commands, statuses = RollbackProjection(), [], []
        for seq, event in enumerate(log, 1):
            for command in fold.apply(event, seq):
                commands.append(encode(command))
                fold.apply(command, seq)
            if seq % 100 == 0:
                statuses.append(repr(fold.status("split")))
        return commands, statuses

    with_room = judged()
    monkeypatch.setattr(projection, "srm_settled", lambda *_: False)
    assert judged() == with_room
    assert bool(with_room[0]) == (share_after != 0.5)  # the drifts are caught, the fair split is not
