"""Statistical checks: sequential (always-valid), sequential Mann-Whitney + effect size, SRM."""

from __future__ import annotations

import random

from rollout_engine.consumers.rollback.stats_tests import rank_test, sequential_test, srm_test


def test_sequential_test_is_significant_for_a_clear_harm_and_not_for_noise() -> None:
    assert sequential_test(5.0, 0.25, 200).significant(0.05)
    assert not sequential_test(0.1, 0.25, 200).significant(0.05)
    assert sequential_test(-3.0, 0.25, 200).p_value == 1.0  # improvement is never harm


def test_sequential_test_is_more_conservative_than_a_fixed_horizon_z_test() -> None:
    # z = 2.5 is p ~ 0.006 one-sided at a fixed horizon; the always-valid p must be larger
    result = sequential_test(2.5, 1.0, 100)
    assert result.p_value is not None and result.p_value > 0.006


def test_sequential_test_with_too_few_samples_is_inconclusive() -> None:
    assert sequential_test(5.0, 1.0, 1).p_value is None


def test_rank_test_detects_a_shift_and_orients_effect_to_harm() -> None:
    rng = random.Random(7)
    worse = [rng.gauss(120, 10) for _ in range(60)]
    base = [rng.gauss(100, 10) for _ in range(60)]
    up = rank_test(worse, base, "greater")
    assert up.significant(0.01) and up.effect is not None and up.effect > 0.5
    down = rank_test(worse, base, "less")  # if lower were worse, this is an improvement
    assert not down.significant(0.05) and down.effect is not None and down.effect < 0


def test_rank_test_on_zero_inflated_and_constant_data_is_not_significant() -> None:
    assert rank_test([0.0] * 50, [0.0] * 50).p_value == 1.0
    sparse = rank_test([0.0] * 48 + [1.0, 1.0], [0.0] * 49 + [1.0])
    assert not sparse.significant(0.05)


def test_kayenta_780_seven_in_ten_hundredfold_regression_has_a_large_effect() -> None:
    result = rank_test([100.0] * 7 + [1.0] * 3, [1.0] * 10)
    assert result.effect is not None and result.effect >= 0.7
    # z = 3.2 (p = 0.0007 at a fixed horizon); valid at every look, 20 samples are enough
    # only when the mixture is tuned for that few, not for the default 5,000
    assert not result.significant(0.05)
    assert rank_test([100.0] * 7 + [1.0] * 3, [1.0] * 10, n_star=20).significant(0.05)


def test_srm_flags_a_skewed_split_and_passes_a_fair_one() -> None:
    assert srm_test(900, 100, 5.0).significant(0.001)
    assert not srm_test(950, 50, 5.0).significant(0.001)
    assert not srm_test(480, 520, 50.0).significant(0.001)


def test_srm_with_tiny_expected_counts_is_inconclusive() -> None:
    assert srm_test(60, 1, 5.0).p_value is None
    assert srm_test(100, 0, 0.0).p_value is None


def test_srm_bayes_factor_stays_low_on_a_fair_split_watched_continuously() -> None:
    import math
    import random

    from rollout_engine.consumers.rollback.stats_tests import srm_log_bayes_factor

    rng = random.Random(2)
    flagged_chi2 = flagged_bf = 0
    for _ in range(40):  # 40 healthy rollouts, each checked after every one of 5,000 decisions
        c = b = 0
        hit_chi2 = hit_bf = False
        for _ in range(5_000):
            c, b = (c + 1, b) if rng.random() < 0.2 else (c, b + 1)
            if c + b >= 200:
                hit_chi2 = hit_chi2 or srm_test(b, c, 20.0).significant(0.001)
                hit_bf = hit_bf or srm_log_bayes_factor(b, c, 20.0) > math.log(1_000)
        flagged_chi2 += hit_chi2
        flagged_bf += hit_bf
    assert flagged_bf == 0
    assert flagged_chi2 >= flagged_bf  # peeking only ever hurts the fixed-horizon test


def test_srm_bayes_factor_confirms_a_real_mismatch_quickly() -> None:
    import math

    from rollout_engine.consumers.rollback.stats_tests import srm_log_bayes_factor

    assert srm_log_bayes_factor(320, 80, 10.0) > math.log(1_000)  # 20% observed vs 10% configured
    assert srm_log_bayes_factor(180, 20, 10.0) < 0  # exactly as configured: evidence for H0
