"""Statistical checks that make a breach significant rather than noise.

Three checks, all pure functions of samples or summary numbers:

* :func:`sequential_test` -- an always-valid p-value from an asymptotic confidence
  sequence (Waudby-Smith et al. 2021, as in GrowthBook's safe rollouts). It stays valid
  when the consumer looks after every event, which a fixed-horizon t-test does not.
* :func:`rank_test` -- Mann-Whitney U with Cliff's delta as the effect size. The guard
  pairs it with an effect-size gate: a rank test alone once passed a 7-in-10 hundredfold
  regression (Kayenta #780) and tiny shifts become "significant" with enough data.
* :func:`srm_test` -- chi-squared of the observed split against the configured canary
  percentage; a sample-ratio mismatch means the comparison itself cannot be trusted.

Each returns a :class:`TestResult`; a result with ``p_value is None`` is inconclusive
(too little or degenerate data), never a failure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import msgspec
from scipy import stats

# Scalar entry points to the ufuncs' own cephes code: bit-identical results, a quarter
# of the call overhead (profiled: srm_test runs on every decision, ~1 us in the ufunc).
from scipy.special import cython_special as special

__all__ = ["TestResult", "rank_test", "sequential_rho", "sequential_test", "srm_log_bayes_factor", "srm_test"]

Direction = Literal["greater", "less"]


class TestResult(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What a check found. ``effect`` is oriented so that positive means harm."""

    statistic: float | None
    p_value: float | None
    effect: float | None = None

    def significant(self, alpha: float) -> bool:
        return self.p_value is not None and self.p_value < alpha


INCONCLUSIVE = TestResult(None, None, None)


def sequential_rho(alpha: float, n_star: int) -> float:
    """Tuning constant of the confidence sequence, tightest near ``n_star`` samples."""
    log_term = -2.0 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / n_star)


def sequential_test(
    estimate: float, variance: float, n: int, *, alpha: float = 0.05, n_star: int = 5000
) -> TestResult:
    """Always-valid p-value that ``estimate`` (an effect, positive = harm) is above 0.

    ``variance`` is the variance of the estimator (``var_c/n_c + var_b/n_b`` for a
    difference of means, ``var/n`` for one mean against a fixed threshold) and ``n`` the
    samples behind it. The p-value is the level at which the asymptotic confidence
    sequence ``estimate +- sqrt(n V) sqrt(2(n rho^2+1)/(n^2 rho^2) log(sqrt(n rho^2+1)/alpha))``
    just excludes zero, in closed form.

    >>> round(sequential_test(1.0, 0.01, 200).p_value, 6)
    0.0
    """
    if n < 2 or not math.isfinite(estimate) or not math.isfinite(variance) or variance < 0:
        return INCONCLUSIVE
    if estimate <= 0:
        return TestResult(estimate, 1.0, estimate)
    if variance == 0:
        return TestResult(math.inf, 0.0, estimate)
    rho2 = sequential_rho(alpha, n_star) ** 2
    scale = n * rho2 + 1.0
    exponent = estimate * estimate * n * rho2 / (2.0 * variance * scale)
    p = min(1.0, math.sqrt(scale) * math.exp(-exponent))
    return TestResult(estimate / math.sqrt(variance), p, estimate)


def rank_test(candidate: Sequence[float], baseline: Sequence[float], harm: Direction = "greater") -> TestResult:
    """Mann-Whitney U (candidate vs baseline) with Cliff's delta, oriented to harm.

    ``harm="greater"`` when higher values are worse (latency, cost, errors), ``"less"``
    when lower values are worse (quality). Ties and zero-inflated data use the
    tie-corrected normal approximation; all-equal samples give p = 1 (no evidence).
    """
    n1, n2 = len(candidate), len(baseline)
    if n1 < 2 or n2 < 2:
        return INCONCLUSIVE
    result = stats.mannwhitneyu(candidate, baseline, alternative=harm, method="asymptotic")
    u = float(result.statistic)
    delta = 2.0 * u / (n1 * n2) - 1.0
    if harm == "less":
        delta = -delta
    p = float(result.pvalue)
    return TestResult(u, p if math.isfinite(p) else 1.0, delta)


def srm_test(baseline_n: int, candidate_n: int, canary_pct: float) -> TestResult:
    """Chi-squared goodness of fit of the observed split against ``canary_pct``.

    Inconclusive when either expected count is under 5 (the approximation breaks down)
    or the split is 0 or 100 percent (nothing to compare).
    """
    total = baseline_n + candidate_n
    share = canary_pct / 100.0
    expected_c, expected_b = total * share, total * (1.0 - share)
    if expected_c < 5.0 or expected_b < 5.0:
        return INCONCLUSIVE
    chi2 = (candidate_n - expected_c) ** 2 / expected_c + (baseline_n - expected_b) ** 2 / expected_b
    p = float(special.chdtrc(1.0, chi2))
    return TestResult(chi2, p, candidate_n / total - share)


def srm_log_bayes_factor(baseline_n: int, candidate_n: int, canary_pct: float, concentration: float = 100.0) -> float:
    """Log Bayes factor of "the split is not ``canary_pct``" (Beta prior centred on it)
    against "it is": an always-valid sample-ratio-mismatch check (Lindon & Malek 2020).

    Under a correct split the factor is a nonnegative martingale, so the chance it *ever*
    exceeds ``1/alpha`` is at most ``alpha`` however often it is looked at (Ville's
    inequality). A chi-squared test checked after every decision is not: at p < 0.001
    it flags about 3% of healthy rollouts within 20,000 decisions.
    """
    share = canary_pct / 100.0
    if not 0.0 < share < 1.0:
        return 0.0
    a, b = concentration * share, concentration * (1.0 - share)
    return float(special.betaln(a + candidate_n, b + baseline_n) - special.betaln(a, b)
                 - candidate_n * math.log(share) - baseline_n * math.log1p(-share))
