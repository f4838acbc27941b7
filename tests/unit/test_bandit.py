"""Policy bandit as a pure fold: joins, reward wait, late outcomes, posteriors, replay,
and a seeded simulation proving Thompson sampling finds the best of three arms."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from scipy import special

from rollout_engine.consumers.bandit.posterior import ArmStats, apply_floor, thompson_weights
from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.bandit.state import parse_policy
from rollout_engine.engine.sdk.choice import BanditChooser, NoBanditState
from rollout_engine.events import (
    BanditConfig,
    Decision,
    Guardrail,
    GuardrailState,
    Outcome,
    Tick,
)

T0 = 1_700_000_000_000
R = "bandit-r1"


class Log:
    """Feeds events to a projection with increasing stream sequences, keeping them for replay."""

    def __init__(self, projection: BanditProjection) -> None:
        self.projection = projection
        self.events: list[object] = []
        self.emitted: list[object] = []

    def __call__(self, event: object) -> list[object]:
        self.events.append(event)
        out = self.projection.apply(event, len(self.events))
        self.emitted.extend(out)
        return out


def config(rollout: str = R, t: int = T0, **bandit: object) -> BanditConfig:
    policy = {"arms": ["a", "b", "c"], **bandit}
    return BanditConfig(
        id=f"cfg-{t}-{len(bandit)}", rollout=rollout, time_ms=t, producer="cli", actor="alice",
        reason="bandit on", bandit=policy,
    )


def decision(i: int | str, arm: str, t: int, rollout: str = R, dry_run: bool = True, context: str | None = None) -> Decision:
    return Decision(
        id=f"d{i}", rollout=rollout, time_ms=t, producer="svc", unit=f"u{i}", variant=arm, reason="bandit",
        canary_pct=0.0, config_version=0, propensity=1 / 3, dry_run=dry_run, context=context,
    )


def outcome(i: int | str, arm: str, t: int, verdict: str = "win", rollout: str = R, reward: float | None = None) -> Outcome:
    return Outcome(
        id=f"o{i}-{t}", rollout=rollout, time_ms=t, producer="svc", decision_id=f"d{i}", variant=arm,
        verdict=verdict, reward=reward,
    )


def tick(t: int) -> Tick:
    return Tick(id=f"tick-{t}", time_ms=t, producer="engine")


def arm(p: BanditProjection, name: str, context: str = "", rollout: str = R) -> ArmStats:
    return p.rollouts[rollout].contexts[context][name]


def test_outcome_joined_by_decision_id_updates_that_arm() -> None:
    log = Log(BanditProjection())
    log(config())
    log(decision(1, "b", T0 + 1))
    log(outcome(1, "b", T0 + 2, "win"))
    stats = arm(log.projection, "b")
    assert (stats.k, stats.s, stats.pulls, stats.defaulted) == (1, 1.0, 1, 0)
    assert log.projection.rollouts[R].pending == {}


def test_missing_outcome_counts_as_default_reward_after_the_wait_and_late_one_is_recorded() -> None:
    log = Log(BanditProjection())
    log(config(default_reward=0.25))
    log(decision(1, "a", T0))
    log(tick(T0 + 599_999))
    assert arm(log.projection, "a").k == 0, "still inside the 10-minute reward wait"
    log(tick(T0 + 600_000))
    stats = arm(log.projection, "a")
    assert (stats.k, stats.s, stats.defaulted) == (1, 0.25, 1)
    log(outcome(1, "a", T0 + 700_000, "win"))
    stats = arm(log.projection, "a")
    assert (stats.k, stats.s, stats.late, stats.late_sum) == (1, 0.25, 1, 1.0), "late: recorded, not re-applied"
    assert log.projection.rollouts[R].counters["late_outcomes"] == 1


def test_inconclusive_outcome_keeps_the_join_open_and_unknown_outcomes_are_counted() -> None:
    log = Log(BanditProjection())
    log(config())
    log(decision(1, "a", T0))
    log(outcome(1, "a", T0 + 10, "inconclusive"))
    assert "d1" in log.projection.rollouts[R].pending
    log(outcome(1, "a", T0 + 20, "loss"))
    assert arm(log.projection, "a").k == 1 and arm(log.projection, "a").s == 0.0
    log(outcome("nope", "a", T0 + 30, "win"))
    log(outcome(1, "a", T0 + 40, "win"))
    counters = log.projection.rollouts[R].counters
    assert counters == {"inconclusive": 1, "unmatched_outcomes": 1, "duplicate_outcomes": 1}


def test_pending_joins_are_bounded_by_defaulting_the_earliest_due() -> None:
    log = Log(BanditProjection(max_pending=10, max_settled=15))
    log(config())
    for i in range(25):
        log(decision(i, "a", T0 + i))
    state = log.projection.rollouts[R]
    assert len(state.pending) == 10 and len(state.settled) == 15
    assert state.counters["evicted"] == 15
    assert sorted(state.pending) == sorted(f"d{i}" for i in range(15, 25))


def test_weights_stay_uniform_until_every_arm_has_its_minimum_sample() -> None:
    log = Log(BanditProjection())
    log(config(min_samples=3, floor=0.0))
    for i in range(3):
        log(decision(f"a{i}", "a", T0 + i))
        log(outcome(f"a{i}", "a", T0 + i, "win"))
        log(decision(f"b{i}", "b", T0 + i))
        log(outcome(f"b{i}", "b", T0 + i, "loss"))
    view = log.projection.view(R)
    assert view.weights[""] == [1 / 3] * 3 and not view.warm, "arm c has no sample yet"
    for i in range(3):
        log(decision(f"c{i}", "c", T0 + 10 + i))
        log(outcome(f"c{i}", "c", T0 + 10 + i, "loss"))
    view = log.projection.view(R)
    assert view.warm and view.weights[""][0] > 0.9


def test_floor_gives_every_arm_a_minimum_share() -> None:
    weights = apply_floor([1.0, 0.0, 0.0], 0.05)
    assert weights == pytest.approx([0.9, 0.05, 0.05])
    assert sum(weights) == pytest.approx(1.0)


def test_thompson_weights_match_monte_carlo_for_beta_and_gaussian() -> None:
    rng = np.random.default_rng(7)
    beta_arms = [ArmStats(n=40, s=12, k=40), ArmStats(n=40, s=20, k=40), ArmStats(n=40, s=22, k=40)]
    draws = np.array([rng.beta(1 + a.s, 1 + a.n - a.s, 200_000) for a in beta_arms])
    expected = np.bincount(draws.argmax(0), minlength=3) / 200_000
    assert thompson_weights(beta_arms, "binary") == pytest.approx(expected, abs=0.01)
    gauss = [ArmStats(n=20, s=20, ss=40, k=20), ArmStats(n=20, s=26, ss=50, k=20)]
    w = thompson_weights(gauss, "gaussian")
    # Normal posteriors of the means (1 prior pseudo-observation at 0, variance 1):
    m0, m1 = 20 / 21, 26 / 21
    v0, v1 = (20 + 1) / 21 / 21, (50 - 26**2 / 20 + 1) / 21 / 21
    assert w[1] == pytest.approx(float(special.ndtr((m1 - m0) / math.sqrt(v0 + v1))), abs=1e-4)
    assert sum(w) == pytest.approx(1.0)


def test_gaussian_rewards_pick_the_arm_with_the_best_mean() -> None:
    log = Log(BanditProjection())
    log(config(reward="gaussian", min_samples=5, floor=0.0))
    rng = np.random.default_rng(3)
    for i in range(60):
        name = "abc"[i % 3]
        log(decision(i, name, T0 + i))
        log(outcome(i, name, T0 + i, "neutral", reward=float(rng.normal({"a": 1.0, "b": 2.0, "c": 1.5}[name], 0.5))))
    weights = log.projection.view(R).weights[""]
    assert weights.index(max(weights)) == 1 and weights[1] > 0.9


def test_discounting_bounds_the_effective_sample_for_drifting_rewards() -> None:
    log = Log(BanditProjection())
    log(config(discount=0.9))
    for i in range(200):
        log(decision(i, "a", T0 + i))
        log(outcome(i, "a", T0 + i, "win"))
    stats = arm(log.projection, "a")
    assert stats.k == 200 and stats.n == pytest.approx(10.0, rel=1e-6), "n -> 1/(1-gamma)"


def test_contexts_keep_separate_posteriors() -> None:
    log = Log(BanditProjection())
    log(config(min_samples=0, floor=0.0))
    for i in range(30):
        log(decision(f"m{i}", "a", T0 + i, context="mobile"))
        log(outcome(f"m{i}", "a", T0 + i, "win"))
        log(decision(f"w{i}", "b", T0 + i, context="web"))
        log(outcome(f"w{i}", "b", T0 + i, "win"))
    weights = log.projection.view(R).weights
    assert weights["mobile"][0] > 0.5 and weights["web"][1] > 0.5
    assert weights[""] == [1 / 3] * 3, "the default context is published for unseen contexts"


def test_invalid_policy_is_counted_and_the_previous_policy_kept() -> None:
    log = Log(BanditProjection())
    log(config())
    log(config(t=T0 + 1, floor=0.9))
    state = log.projection.rollouts[R]
    assert state.policy is not None and state.policy.floor == 0.01
    assert state.counters["config_errors"] == 1 and "floor" in state.last_error
    with pytest.raises(ValueError, match="default_arm"):
        parse_policy({"arms": ["a"], "default_arm": "z"})


def test_disabling_the_bandit_serves_the_default_arm_with_reason_disabled() -> None:
    log = Log(BanditProjection())
    log(config(default_arm="b"))
    log(Guardrail(
        id="g1", rollout=R, time_ms=T0 + 1, producer="cli", actor="alice", reason="incident",
        before=GuardrailState(), after=GuardrailState(bandit_enabled=False),
    ))
    view = log.projection.view(R)
    assert view.weights[""] == [0.0, 1.0, 0.0] and not view.enabled
    chooser = BanditChooser()
    chooser.update(encode_view(log.projection, R))
    choice = chooser.choose(R, "u1", decision_id="x", time_ms=T0 + 2)
    assert (choice.variant, choice.reason, choice.propensity) == ("b", "disabled", 1.0)


def encode_view(p: BanditProjection, rollout: str) -> bytes:
    return msgspec.msgpack.encode(p.view(rollout))


def test_choose_is_reproducible_from_the_decision_id_and_follows_the_weights() -> None:
    log = Log(BanditProjection())
    log(config(min_samples=0, floor=0.1))
    for i in range(20):
        log(decision(i, "c", T0 + i))
        log(outcome(i, "c", T0 + i, "win"))
    chooser = BanditChooser()
    view = chooser.update(encode_view(log.projection, R))
    first = chooser.choose(R, "u", decision_id="same", time_ms=T0)
    assert chooser.choose(R, "u", decision_id="same", time_ms=T0) == first
    picks = [chooser.choose(R, "u", decision_id=f"k{i}", time_ms=T0).variant for i in range(20_000)]
    shares = [picks.count(a) / len(picks) for a in view.arms]
    assert shares == pytest.approx(view.weights[""], abs=0.015)
    with pytest.raises(NoBanditState, match="no bandit view"):
        chooser.choose("other", "u")


def _fold(events: list[object], cut: int | None = None) -> bytes:
    p = BanditProjection(max_pending=50, max_settled=60)
    for seq, event in enumerate(events, 1):
        if cut is not None and seq == cut:
            restored = BanditProjection(max_pending=50, max_settled=60)
            restored.restore(p.snapshot())
            p = restored
        p.apply(event, seq)
    return p.snapshot()


def test_replay_reproduces_the_bandit_state_bit_for_bit_even_across_a_restore() -> None:
    rng = np.random.default_rng(11)
    events: list[object] = [config(discount=0.99, min_samples=2)]
    for i in range(400):
        t = T0 + i * 5_000
        name = "abc"[int(rng.integers(3))]
        events.append(decision(i, name, t, dry_run=bool(rng.random() < 0.8), context=["x", None][i % 2]))
        if rng.random() < 0.7:
            verdict = ["win", "loss", "neutral", "inconclusive"][int(rng.integers(4))]
            late = int(rng.integers(0, 900_000))
            events.append(outcome(i, name, t + late, verdict))
        if i % 10 == 0:
            events.append(tick(t))
    once, again = _fold(events), _fold(events)
    assert once == again
    assert _fold(events, cut=len(events) // 2) == once
    assert _fold(events, cut=len(events) // 3) == once


# --- the simulation of the Done-when ----------------------------------------------------
PROBS = {"a": 0.3, "b": 0.5, "c": 0.7}
HORIZON = 3000
FLOOR = 0.01
MIN_SAMPLES = 10


def regret_bound(k: int, horizon: int) -> float:
    """sqrt(K T ln T) (Agrawal & Goyal's problem-independent order for Thompson sampling,
    constant 1) + what our safety features cost by construction: the floor serves each
    worse arm ``floor*T`` times, the warm-up at most ``K*min_samples`` uniform rounds."""
    gaps = [max(PROBS.values()) - p for p in PROBS.values()]
    return (
        math.sqrt(k * horizon * math.log(horizon))
        + FLOOR * horizon * sum(gaps)
        + k * MIN_SAMPLES * max(gaps)
    )


def simulate(seed: int) -> tuple[float, list[str]]:
    """The full loop: projection -> published view -> choose() -> Decision -> Outcome."""
    rng = np.random.default_rng(seed)  # the environment's randomness, not the policy's
    log = Log(BanditProjection())
    chooser = BanditChooser()
    log(config(floor=FLOOR, min_samples=MIN_SAMPLES))
    regret, picks = 0.0, []
    best = max(PROBS.values())
    for step in range(HORIZON):
        now = T0 + step * 1_000
        for rollout in log.projection.changed_parts():  # what the KV mirror puts: the touched rollouts
            if rollout:
                chooser.update(encode_view(log.projection, rollout))
        choice = chooser.choose(R, f"u{step}", decision_id=f"s{seed}-{step}", time_ms=now)
        log(chooser.decision(choice, producer="sim"))
        won = rng.random() < PROBS[choice.variant]
        log(Outcome(
            id=f"o{seed}-{step}", rollout=R, time_ms=now + 500, producer="sim", decision_id=choice.decision_id,
            variant=choice.variant, verdict="win" if won else "loss",
        ))
        regret += best - PROBS[choice.variant]
        picks.append(choice.variant)
    return regret, picks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thompson_sampling_finds_the_best_of_three_arms_with_regret_under_the_bound(seed: int) -> None:
    regret, picks = simulate(seed)
    bound = regret_bound(3, HORIZON)
    assert regret < bound, f"cumulative regret {regret:.1f} >= bound {bound:.1f}"
    assert regret < 0.25 * HORIZON * (0.7 - 0.5), "far better than uniform play (regret 0.2 per round)"
    tail = picks[-1000:]
    assert tail.count("c") / len(tail) > 0.9, "the best arm dominates once learned"


def test_incremental_parts_committed_per_batch_restore_to_the_same_state() -> None:
    """What the runtime does: store changed parts after each batch, restore from the rows."""
    events = [config(min_samples=2)]
    for i in range(300):
        events.append(decision(i, "abc"[i % 3], T0 + i * 3_000, rollout=R if i % 4 else "other"))
        events.append(outcome(i, "abc"[i % 3], T0 + i * 3_000 + 900_000 * (i % 2), "win", rollout=R if i % 4 else "other"))
    events.insert(1, config(rollout="other"))
    continuous = BanditProjection()
    for seq, event in enumerate(events, 1):
        continuous.apply(event, seq)
    rows: dict[str, bytes] = {}
    p = BanditProjection()
    for start in range(0, len(events), 37):
        for seq, event in enumerate(events[start:start + 37], start + 1):
            p.apply(event, seq)
        rows.update(p.changed_parts())
        if start == 37 * 8:
            p = BanditProjection()
            p.restore_parts(rows)
    assert rows == continuous.all_parts()
    assert p.snapshot() == continuous.snapshot()
