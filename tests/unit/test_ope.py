"""Off-policy evaluation: IPS and SNIPS intervals cover the true value on synthetic logs."""

from __future__ import annotations

import numpy as np
import pytest

from rollout_engine.engine.logtools.ope import (
    LoggedRound,
    check_policy,
    estimate,
    join_rounds,
    parse_policy_text,
)
from rollout_engine.events import Decision, Outcome

ARMS = ["a", "b", "c"]
TRUE_P = np.array([0.3, 0.5, 0.7])
LOGGING = np.array([0.5, 0.3, 0.2])
TARGET = {"": {"a": 0.1, "b": 0.1, "c": 0.8}}
TRUE_VALUE = float(np.dot([0.1, 0.1, 0.8], TRUE_P))  # 0.64


def synthetic_log(seed: int, n: int = 2000) -> list[LoggedRound]:
    rng = np.random.default_rng(seed)
    arms = rng.choice(3, size=n, p=LOGGING)
    rewards = (rng.random(n) < TRUE_P[arms]).astype(float)
    return [LoggedRound("", ARMS[a], float(LOGGING[a]), float(r)) for a, r in zip(arms, rewards, strict=True)]


def test_ips_and_snips_intervals_cover_the_true_value_on_synthetic_logs() -> None:
    seeds = range(200)
    results = [estimate(synthetic_log(s), TARGET) for s in seeds]
    ips_cover = np.mean([r.ips_low <= TRUE_VALUE <= r.ips_high for r in results])
    snips_cover = np.mean([r.snips_low <= TRUE_VALUE <= r.snips_high for r in results])
    # Nominal 95%: with 200 logs the observed coverage is within 0.90..1.0 with >99% chance.
    assert ips_cover >= 0.90, ips_cover
    assert snips_cover >= 0.90, snips_cover
    first = results[0]
    assert first.ips_low <= TRUE_VALUE <= first.ips_high, "and on the first log itself"
    assert np.mean([r.ips for r in results]) == pytest.approx(TRUE_VALUE, abs=0.01), "unbiased"
    assert first.logged_value == pytest.approx(float(np.dot(LOGGING, TRUE_P)), abs=0.05)
    assert 0 < first.effective_n < first.n


def test_evaluating_the_logging_policy_itself_gives_weights_of_one() -> None:
    rounds = synthetic_log(1, 500)
    result = estimate(rounds, {"": dict(zip(ARMS, LOGGING.tolist(), strict=True))})
    assert result.ips == pytest.approx(result.logged_value)
    assert result.snips == pytest.approx(result.logged_value)
    assert result.effective_n == pytest.approx(500)


def test_rewards_are_joined_by_decision_id_like_the_bandit_joins_them() -> None:
    base = {"rollout": "r", "producer": "svc", "time_ms": 1}
    events = [
        Decision(id="d1", unit="u", variant="a", reason="bandit", canary_pct=0, config_version=0, propensity=0.5, **base),
        Decision(id="d2", unit="u", variant="b", reason="forced_safe", canary_pct=0, config_version=0,
                 propensity=0.25, context="m", **base),
        Decision(id="d3", unit="u", variant="a", reason="bandit", canary_pct=0, config_version=0, propensity=0.5, **base),
        Decision(id="d4", unit="u", variant="a", reason="canary", canary_pct=5, config_version=0, propensity=0.05, **base),
        Outcome(id="o1", decision_id="d1", variant="a", verdict="inconclusive", **base),
        Outcome(id="o2", decision_id="d1", variant="a", verdict="win", **base),
        Outcome(id="o3", decision_id="d2", variant="b", verdict="neutral", **base),
        Outcome(id="o4", decision_id="d4", variant="a", verdict="win", **base),
    ]
    rounds, missing = join_rounds(events, "r")
    assert rounds == [LoggedRound("", "a", 0.5, 1.0), LoggedRound("m", "b", 0.25, 0.5), LoggedRound("", "a", 0.5, 0.0)]
    assert missing == 1
    dropped, _ = join_rounds(events, "r", default_reward=None)
    assert len(dropped) == 2


def test_candidate_policies_are_validated_with_a_useful_message() -> None:
    assert parse_policy_text("a=0.2, b=0.8") == {"": {"a": 0.2, "b": 0.8}}
    with pytest.raises(ValueError, match=r"sum to 0\.9,"):
        parse_policy_text("a=0.2,b=0.7")
    with pytest.raises(ValueError, match="ARM=PROBABILITY"):
        parse_policy_text("a")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_policy({"x": {"a": 1.5, "b": -0.5}})
    with pytest.raises(ValueError, match="no logged decisions"):
        estimate([], TARGET)
