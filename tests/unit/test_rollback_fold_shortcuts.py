"""Shortcuts of the rollback fold give the statuses the full computation gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.rollback.guards import GuardIndex, evaluate_srm
from rollout_engine.consumers.rollback.policy import SrmConfig, load_policy
from rollout_engine.consumers.rollback.stats_tests import srm_clearly_fits, srm_test


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
