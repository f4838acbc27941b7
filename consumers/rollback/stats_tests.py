"""Statistical checks that make a breach significant rather than noise.

The rollback consumer judges after every event, so a check that is only valid at one
fixed sample size would be re-run hundreds of times and cry wolf (a z-test at every
look flags a third to a half of healthy rollouts). The guards' checks are therefore
*always valid*: their false-positive rate stays below ``alpha`` however often they look.

* :func:`sequential_test` -- a difference of means (or one mean against a threshold):
  an always-valid p-value from a one-sided normal-mixture sequential probability ratio
  (the mixture martingale behind Waudby-Smith et al.'s asymptotic confidence sequences
  and GrowthBook's safe rollouts), on every sample of the evidence epoch.
* :func:`sequential_rank_test` -- Mann-Whitney U over every sample of the epoch (read as
  histograms at the sketches' 1% accuracy, ties tie-corrected), its standardised
  statistic judged by the same mixture boundary; Cliff's delta is the effect size the
  guard gates on (a rank test alone passed a 7-in-10 hundredfold regression, Kayenta #780).
* :func:`srm_test` -- chi-squared of the observed split against the configured canary
  percentage, confirmed by the always-valid Bayes factor :func:`srm_log_bayes_factor`.

Each returns a :class:`TestResult`; a result with ``p_value is None`` is inconclusive
(too little or degenerate data), never a failure.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import msgspec

# Scalar entry points to the ufuncs' own cephes code: bit-identical results, a quarter
# of the call overhead (profiled: srm_test runs on every decision, ~1 us in the ufunc).
from scipy.special import cython_special as special

__all__ = [
    "INCONCLUSIVE",
    "TestResult",
    "always_valid_p",
    "rank_statistic",
    "rank_test",
    "sequential_rank_test",
    "sequential_rho",
    "sequential_test",
    "srm_clearly_fits",
    "srm_log_bayes_factor",
    "srm_test",
    "tally",
    "welch_df",
]

Direction = Literal["greater", "less"]
Bins = Sequence[tuple[float, float]]
"""Sorted ``(value or bin, count)`` pairs: a sample with its ties counted."""


class TestResult(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What a check found. ``effect`` is oriented so that positive means harm."""

    statistic: float | None
    p_value: float | None
    effect: float | None = None

    def significant(self, alpha: float) -> bool:
        return self.p_value is not None and self.p_value < alpha


INCONCLUSIVE = TestResult(None, None, None)
_SQRT2 = math.sqrt(2.0)


def sequential_rho(alpha: float, n_star: int) -> float:
    """Tuning constant of the mixture, tightest near ``n_star`` samples."""
    log_term = -2.0 * math.log(alpha)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / n_star)


def always_valid_p(z: float, n: int, *, alpha: float = 0.05, n_star: int = 5000) -> float:
    """One-sided always-valid p-value of a standardised statistic ``z`` after ``n`` samples.

    ``1 / M`` where ``M`` is the normal-mixture likelihood ratio with a half-normal prior
    on positive (harmful) effects, ``M = 2/sqrt(s) exp(z^2 (s-1) / 2s) Phi(z sqrt((s-1)/s))``
    with ``s = n rho^2 + 1``. Under "no harm", ``M`` is a nonnegative supermartingale,
    so the chance that the p-value *ever* falls below ``alpha`` is at most ``alpha``
    (Ville's inequality), however often it is read. Asymptotic: ``z`` must be close to
    normal, which the guards' minimum samples provide.

    >>> round(always_valid_p(5.0, 1000, alpha=0.05, n_star=1000), 6)
    2.3e-05
    """
    if n < 2 or not math.isfinite(z):
        return 1.0 if z <= 0 or not math.isfinite(z) else 0.0
    if z <= 0:
        return 1.0
    rho2 = sequential_rho(alpha, n_star) ** 2
    s = n * rho2 + 1.0
    shrink = (s - 1.0) / s
    phi = 0.5 * math.erfc(-z * math.sqrt(shrink) / _SQRT2)
    log_m = math.log(2.0 * phi) - 0.5 * math.log(s) + 0.5 * z * z * shrink
    return 1.0 if log_m <= 0 else math.exp(-log_m)


def sequential_test(
    estimate: float, variance: float, n: int, *, alpha: float = 0.05, n_star: int = 5000, df: float | None = None
) -> TestResult:
    """Always-valid p-value that ``estimate`` (an effect, positive = harm) is above 0.

    ``variance`` is the variance of the estimator (``var_c/n_c + var_b/n_b`` for a
    difference of means, ``var/n`` for one mean against a fixed threshold) and ``n`` the
    samples behind it; the statistic is ``t = estimate / sqrt(variance)``, judged by
    :func:`always_valid_p`. Valid only when ``estimate`` and ``variance`` come from the
    same growing sample (every sample of the evidence epoch): a sliding window is a
    new sample at every look.

    ``df`` (the degrees of freedom of the estimated variance: ``n - 1``, or Welch's for
    two samples) first maps ``t`` to the normal deviate with the same tail probability.
    An estimated variance makes ``t`` heavier-tailed than normal while a sample is
    small; uncorrected, a 10% canary (30-100 candidate samples for minutes) had twice
    its stated false alarms.

    >>> round(sequential_test(1.0, 0.01, 200).p_value, 6)
    0.0
    """
    if n < 2 or not math.isfinite(estimate) or not math.isfinite(variance) or variance < 0:
        return INCONCLUSIVE
    if estimate <= 0:
        return TestResult(estimate, 1.0, estimate)
    if variance == 0:
        return TestResult(math.inf, 0.0, estimate)
    t = estimate / math.sqrt(variance)
    z = t if df is None or not df > 0 else -float(special.ndtri(special.stdtr(float(df), -t)))
    return TestResult(t, always_valid_p(z, n, alpha=alpha, n_star=n_star), estimate)


def welch_df(var_c: float, n_c: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of ``var_c/n_c + var_b/n_b``."""
    a, b = var_c / n_c, var_b / n_b
    denominator = a * a / (n_c - 1) + b * b / (n_b - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else math.inf


def rank_statistic(candidate: Bins, baseline: Bins) -> tuple[float, float, int, int] | None:
    """Mann-Whitney ``(U, sd of U under no difference, n_candidate, n_baseline)`` from two
    sorted tallies; ties count a half and shrink the variance (the tie correction).

    ``U`` counts baseline values below each candidate value: ``U / (n_c n_b)`` is the
    chance that a candidate value is above a baseline one.
    """
    n1 = sum(c for _, c in candidate)
    n2 = sum(c for _, c in baseline)
    if n1 < 2 or n2 < 2:
        return None
    u = below = ties = 0.0
    i = j = 0
    while i < len(candidate) or j < len(baseline):
        key_c = candidate[i][0] if i < len(candidate) else math.inf
        key_b = baseline[j][0] if j < len(baseline) else math.inf
        if key_c < key_b:
            count_c, count_b = candidate[i][1], 0.0
            i += 1
        elif key_b < key_c:
            count_c, count_b = 0.0, baseline[j][1]
            j += 1
        else:
            count_c, count_b = candidate[i][1], baseline[j][1]
            i += 1
            j += 1
        u += count_c * (below + 0.5 * count_b)
        below += count_b
        t = count_c + count_b
        ties += t * t * t - t
    total = n1 + n2
    var = n1 * n2 / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)))
    return u, math.sqrt(max(var, 0.0)), int(n1), int(n2)


def sequential_rank_test(candidate: Bins, baseline: Bins, harm: Direction = "greater", *,
                         alpha: float = 0.05, n_star: int = 5000) -> TestResult:
    """Always-valid Mann-Whitney test that the candidate's values are shifted towards harm.

    ``harm="greater"`` when higher values are worse (latency, cost, errors), ``"less"``
    when lower values are worse (quality). The statistic is the standardised U
    (``(U - n_c n_b / 2) / sd``, towards harm), judged by :func:`always_valid_p` with
    ``n = n_c + n_b``; the effect is Cliff's delta towards harm. All-equal samples give
    p = 1 (no evidence).
    """
    got = rank_statistic(candidate, baseline)
    if got is None:
        return INCONCLUSIVE
    u, sd, n1, n2 = got
    delta = 2.0 * u / (n1 * n2) - 1.0
    z = (u - n1 * n2 / 2.0) / sd if sd > 0 else 0.0
    if harm == "less":
        delta, z = -delta, -z
    return TestResult(z, always_valid_p(z, n1 + n2, alpha=alpha, n_star=n_star), delta)


def tally(values: Sequence[float]) -> list[tuple[float, float]]:
    """Raw values as a sorted tally (each distinct value with its count)."""
    return sorted((v, float(c)) for v, c in Counter(values).items())


def rank_test(candidate: Sequence[float], baseline: Sequence[float], harm: Direction = "greater", *,
              alpha: float = 0.05, n_star: int = 5000) -> TestResult:
    """:func:`sequential_rank_test` on raw values (exact ranks, no binning)."""
    return sequential_rank_test(tally(candidate), tally(baseline), harm, alpha=alpha, n_star=n_star)


def srm_test(baseline_n: int, candidate_n: int, canary_pct: float) -> TestResult:
    """Chi-squared goodness of fit of the observed split against ``canary_pct``.

    Inconclusive when either expected count is under 5 (the approximation breaks down)
    or the split is 0 or 100 percent (nothing to compare).
    """
    chi2 = _srm_chi2(baseline_n, candidate_n, canary_pct)
    if chi2 is None:
        return INCONCLUSIVE
    p = float(special.chdtrc(1.0, chi2))
    return TestResult(chi2, p, candidate_n / (baseline_n + candidate_n) - canary_pct / 100.0)


def _srm_chi2(baseline_n: int, candidate_n: int, canary_pct: float) -> float | None:
    """The split's chi-squared statistic (1 df), or None when an expected count is under 5."""
    total = baseline_n + candidate_n
    share = canary_pct / 100.0
    expected_c, expected_b = total * share, total * (1.0 - share)
    if expected_c < 5.0 or expected_b < 5.0:
        return None
    return (candidate_n - expected_c) ** 2 / expected_c + (baseline_n - expected_b) ** 2 / expected_b


@functools.lru_cache(maxsize=64)
def _chi2_critical(p_value: float) -> float:
    """The chi-squared value (1 df) whose survival is ``p_value``, less a 1e-6 margin:
    below it, ``chdtrc`` (monotone, accurate to ~1e-14) is certainly above ``p_value``."""
    return float(special.chdtri(1.0, p_value)) * (1.0 - 1e-6)


def srm_clearly_fits(baseline_n: int, candidate_n: int, canary_pct: float, p_value: float) -> bool:
    """True when :func:`srm_test` would certainly give a p-value >= ``p_value`` (a
    conclusive pass), decided from the statistic alone. Profiled: the p-value was 6% of
    the rollback fold, computed on every decision to learn that the split is fine."""
    chi2 = _srm_chi2(baseline_n, candidate_n, canary_pct)
    return chi2 is not None and chi2 < _chi2_critical(p_value)


def srm_room(baseline_n: int, candidate_n: int, canary_pct: float, p_value: float) -> int:
    """Decisions that may follow, each to either variant, with the split still certain to
    clearly fit (:func:`srm_clearly_fits`); -1 when it does not clearly fit with margin now.

    Why: the rollback fold screened the split on every decision, a quarter of its events.
    With T decisions, share s and d = candidate_n - T*s, the statistic is
    d^2 / (T s (1 - s)). After k more decisions, whichever variants they go to, |d| grows
    by at most k and T s (1 - s) does not shrink, so the split clearly fits while
    (|d| + k)^2 < critical * T s (1 - s); the expected counts only grow, so they stay at
    5 or more. A 0.1% margin on the critical value covers the rounding of the statistic
    as :func:`_srm_chi2` computes it, and one decision more covers the floor."""
    share = canary_pct / 100.0
    total = baseline_n + candidate_n
    if not 0.0 < share < 1.0 or total * share < 5.0 or total * (1.0 - share) < 5.0:
        return -1
    bound = math.sqrt(0.999 * _chi2_critical(p_value) * total * share * (1.0 - share))
    return max(-1, math.floor(bound - abs(candidate_n - total * share)) - 1)


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
