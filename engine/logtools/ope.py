"""Off-policy evaluation: what would a candidate policy have earned on past traffic?

Every bandit decision is logged with its propensity (the probability the serving policy
gave the arm it chose). Re-weighting each logged reward by ``pi(arm | context) /
propensity`` gives an unbiased estimate of the candidate policy ``pi``'s value (inverse
propensity scoring, IPS); dividing by the sum of the weights instead of ``n`` gives the
self-normalised estimate (SNIPS), slightly biased but with much less variance when the
weights are large. Both come with a normal-approximation confidence interval (the sample
standard error for IPS, the delta method for SNIPS), and the effective sample size
``(sum w)^2 / sum w^2`` says how much of the log the candidate really reuses.

Rewards are joined exactly as the bandit consumer joins them (outcome by decision id,
``inconclusive`` is no reward, a missing outcome counts as ``default_reward``), so the
estimate is on the scale the bandit optimises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rollout_engine.events import AnyEvent, Decision, Outcome

__all__ = ["Estimate", "LoggedRound", "TargetPolicy", "estimate", "join_rounds", "parse_policy_text"]

TargetPolicy = Mapping[str, Mapping[str, float]]
"""context ("" = any context without its own entry) -> arm -> probability."""


@dataclass(frozen=True, slots=True)
class LoggedRound:
    """One logged decision with its joined reward."""

    context: str
    arm: str
    propensity: float
    reward: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """A candidate policy's estimated value, with intervals at ``level``."""

    n: int
    level: float
    logged_value: float
    ips: float
    ips_low: float
    ips_high: float
    snips: float
    snips_low: float
    snips_high: float
    effective_n: float
    max_weight: float
    missing_outcomes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reward_of(outcome: Outcome, neutral_reward: float) -> float | None:
    if outcome.reward is not None:
        return outcome.reward
    return {"win": 1.0, "loss": 0.0, "neutral": neutral_reward}.get(outcome.verdict)


def join_rounds(
    events: Iterable[AnyEvent],
    rollout: str,
    *,
    reasons: frozenset[str] = frozenset({"bandit", "forced_safe"}),
    default_reward: float | None = 0.0,
    neutral_reward: float = 0.5,
) -> tuple[list[LoggedRound], int]:
    """Join a rollout's logged decisions and outcomes; return (rounds, missing outcomes).

    Decisions without a positive propensity cannot be re-weighted and are skipped. The
    first conclusive outcome of a decision is its reward; with ``default_reward=None`` a
    decision with no conclusive outcome is dropped instead of defaulted.
    """
    decisions: dict[str, Decision] = {}
    rewards: dict[str, float] = {}
    for event in events:
        if event.rollout != rollout:
            continue
        if isinstance(event, Decision):
            if event.reason in reasons and event.propensity > 0.0:
                decisions.setdefault(event.id, event)
        elif isinstance(event, Outcome) and event.decision_id not in rewards:
            reward = _reward_of(event, neutral_reward)
            if reward is not None:
                rewards[event.decision_id] = reward
    rounds: list[LoggedRound] = []
    missing = 0
    for decision_id, d in decisions.items():
        reward = rewards.get(decision_id)
        if reward is None:
            missing += 1
            if default_reward is None:
                continue
            reward = default_reward
        rounds.append(LoggedRound(d.context or "", d.variant, d.propensity, reward))
    return rounds, missing


def _target_prob(policy: TargetPolicy, context: str, arm: str) -> float:
    table = policy.get(context, policy.get("", {}))
    return float(table.get(arm, 0.0))


def estimate(rounds: list[LoggedRound], policy: TargetPolicy, level: float = 0.95, missing: int = 0) -> Estimate:
    """IPS and SNIPS values of ``policy`` on ``rounds``, with ``level`` intervals."""
    if not rounds:
        raise ValueError("no logged decisions with propensities and rewards to evaluate; "
                         "is the rollout served by choose() (reason bandit)?")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = np.array([r.propensity for r in rounds])
    r = np.array([r.reward for r in rounds])
    pi = np.array([_target_prob(policy, x.context, x.arm) for x in rounds])
    w = pi / p
    n = len(rounds)
    wr = w * r
    ips = float(wr.mean())
    ips_se = float(wr.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    wsum = float(w.sum())
    if wsum > 0:
        snips = float(wr.sum() / wsum)
        snips_se = float(math.sqrt(float(np.sum(w * w * (r - snips) ** 2))) / wsum)
        eff = wsum * wsum / float(np.sum(w * w))
    else:
        snips, snips_se, eff = math.nan, math.inf, 0.0
    return Estimate(
        n=n, level=level, logged_value=float(r.mean()),
        ips=ips, ips_low=ips - z * ips_se, ips_high=ips + z * ips_se,
        snips=snips, snips_low=snips - z * snips_se, snips_high=snips + z * snips_se,
        effective_n=eff, max_weight=float(w.max()), missing_outcomes=missing,
    )


def parse_policy_text(text: str) -> dict[str, dict[str, float]]:
    """``"a=0.2,b=0.8"`` -> ``{"": {"a": 0.2, "b": 0.8}}``; probabilities must sum to 1."""
    table: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        arm, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"policy item {part!r}: expected ARM=PROBABILITY, e.g. a=0.2,b=0.8")
        try:
            table[arm.strip()] = float(value)
        except ValueError:
            raise ValueError(f"policy item {part!r}: {value!r} is not a number") from None
    return check_policy({"": table})


def check_policy(policy: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Every context's probabilities are in [0, 1] and sum to 1 (within 1e-6)."""
    out: dict[str, dict[str, float]] = {}
    for context, table in policy.items():
        if not table or any(not 0.0 <= float(v) <= 1.0 for v in table.values()):
            raise ValueError(f"policy for context {context!r}: probabilities must be in [0, 1], got {dict(table)}")
        total = sum(float(v) for v in table.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"policy for context {context!r}: probabilities sum to {total:.6g}, not 1")
        out[str(context)] = {str(k): float(v) for k, v in table.items()}
    return out
