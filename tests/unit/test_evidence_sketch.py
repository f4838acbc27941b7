"""The rollback fold sketches every sample only for a policy that reads the sketch.

A sketch of every sample is what a percentile of the ``all`` window and the rank test
read; on the bench workload it was 13% of the rollback fold, and the built-in policy
reads neither. These tests hold the claim that leaving it out changes no judgement, and
the two rules around it: a policy that needs a sketch the fold never made starts new
evidence, and a policy that needs less keeps the evidence it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.rollback.evidence import new_stats, serves, sketched, stats_shape
from rollout_engine.consumers.rollback.policy import load_policy
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import Profile, policy_change, runs
from rollout_engine.consumers.windows import Series
from rollout_engine.events import encode
from tests.unit.fold_workloads import log
from tests.unit.test_rollback_projection import fold

R = "checkout-v2"
RANK_TEST = {"guards": [{"name": "ratio", "metric": "latency_ms", "mode": "ratio", "threshold": 1.2,
                         "test": "mann_whitney"}]}


def _always_sketched(shape: Sequence[int]) -> CanaryStats:
    last_n, window_ms, time_cap = shape[:3]
    return CanaryStats(last_n=last_n, window_ms=window_ms, time_cap=time_cap, sketch=True)


def _judged(projection: RollbackProjection, seed: int) -> tuple[list[bytes], list[str]]:
    commands: list[bytes] = []
    statuses: list[str] = []
    for seq, event in enumerate(log(seed, 3_000), 1):
        for command in projection.apply(event, seq):
            commands.append(encode(command))
            projection.apply(command, seq)
        if seq % 250 == 0:
            statuses += [repr(projection.status(rollout)) for rollout in sorted(projection.rollouts)]
    return commands, statuses


@pytest.mark.parametrize("seed", range(8))
def test_a_fold_without_the_sketch_judges_exactly_as_one_with_it(seed: int) -> None:
    """The workloads mix policies that read the sketch (p95 of ``all``, a rank test) and
    policies that do not: every command and every status of the lean evidence (no sketch
    unless read, the series alone) is the one of a full canary-stats fold (a policy that
    read a sketch its fold lacked would raise instead)."""
    lean = _judged(RollbackProjection(), seed)
    assert lean[0], "the workload must make commands, or the comparison proves little"
    assert lean == _judged(RollbackProjection(stats_factory=_always_sketched), seed)


def test_only_a_percentile_of_every_sample_or_a_rank_test_asks_for_a_sketch() -> None:
    assert stats_shape(load_policy({}))[3] == 0  # the built-in guards: means and a p95 of the last 100
    assert stats_shape(load_policy(RANK_TEST))[3] == 1  # the rank test reads every sample, whatever its window
    p95_all = {"guards": [{"name": "tail", "metric": "latency_ms", "aggregate": "p95", "window": "all",
                           "threshold": 900.0}]}
    assert stats_shape(load_policy(p95_all))[3] == 1
    mean_all = {"guards": [{"name": "cost_seq", "metric": "cost_cents", "window": "all", "test": "sequential",
                            "threshold": 2.0}]}
    assert stats_shape(load_policy(mean_all))[3] == 0  # count, mean and variance of every sample: no sketch


def test_a_sketched_fold_serves_a_policy_that_reads_less_but_not_the_reverse() -> None:
    assert serves([100, 300_000, 8, 1], [100, 300_000, 8, 0])
    assert not serves([100, 300_000, 8, 0], [100, 300_000, 8, 1])
    assert not serves([100, 300_000, 8, 1], [50, 300_000, 8, 1])  # other windows: other evidence
    assert sketched([100, 300_000, 8])  # a shape stored before the flag: its fold always sketched
    assert new_stats([100, 300_000, 8]).sketch and not new_stats([100, 300_000, 8, 0]).sketch


def test_a_policy_that_needs_a_sketch_starts_new_evidence_and_one_that_needs_less_keeps_it() -> None:
    p = RollbackProjection()
    fold(p, runs(R, 40))
    r = p.rollouts[R]
    assert (r.epoch, r.shape[3]) == (0, 0)
    fold(p, [policy_change(R, RANK_TEST)], start=1_000)
    assert (r.epoch, r.shape[3]) == (1, 1)  # the rank test reads every sample: none was sketched
    fold(p, runs(R, 40, start=40, candidate=Profile()), start=2_000)
    held = p._stats[R]
    fold(p, [policy_change(R, {})], start=3_000)
    assert (r.epoch, r.shape[3]) == (1, 1) and p._stats[R] is held  # the built-in policy reads less: same fold


def test_a_series_without_a_sketch_refuses_percentiles_of_every_sample_once_its_ring_dropped_one() -> None:
    series = Series()
    for i in range(10):
        series.push(float(i), 1_000 + i, 0, 10, 10, sketched=False)
    assert series.all_quantile(0.5) == 4.5  # the ring still holds every sample: exact
    series.push(10.0, 1_010, 0, 10, 10, sketched=False)
    assert series.sketch is None and series.n == 11
    with pytest.raises(RuntimeError, match="no sketch of every sample"):
        series.all_quantile(0.5)
    with pytest.raises(RuntimeError, match="no sketch of every sample"):
        series.histogram()
    n, mean, _var, quantiles = series.summary("all", 0, 10)
    assert (n, mean, quantiles) == (11, 5.0, None)  # count and mean of every sample, no percentile made up
