"""The policy-bandit projection: join outcomes to decisions, update arm posteriors.

A pure fold of the log (no I/O, no clock, no randomness):

- ``BanditConfig`` with a ``bandit`` table opts a rollout in (or changes its arms);
- ``Decision`` with reason ``bandit``/``forced_safe`` for an arm opens a pending join,
  due ``reward_wait_s`` later in event time;
- ``Outcome`` with the decision's id settles it: its reward updates the arm's posterior
  (``inconclusive`` is not a reward: the join stays open for the verification queue's
  re-check); a join still open when due settles with ``default_reward``; an outcome for
  a join already defaulted is counted as *late* on its arm, never dropped silently;
- a ``loss`` joined to a normal-mode decision starts the guardrail cooldown and emits a
  ``Guardrail`` event recording it; operators' ``Guardrail`` events set the switches.

Memory is bounded per rollout: at most ``max_pending`` open joins (the oldest is
defaulted early and counted as ``evicted``) and ``max_settled`` remembered settled ids
(to tell a late outcome from an unknown one). Decision ids are scoped by rollout.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from rollout_engine.consumers.bandit import posterior
from rollout_engine.consumers.bandit.state import BanditPolicy, BanditView, parse_policy
from rollout_engine.consumers.eventtime import DueTimers
from rollout_engine.consumers.guardrails import cooldown_event, prune_normal_times, start_cooldown
from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.events import (
    AnyEvent,
    BanditConfig,
    Decision,
    Event,
    Guardrail,
    GuardrailState,
    Metric,
    Outcome,
)

__all__ = ["BanditProjection", "RolloutBandit"]

LEARNING_REASONS = frozenset({"bandit", "forced_safe"})
MAX_NORMAL_TIMES = 3600


class Pending(msgspec.Struct, array_like=True, gc=False):
    arm: str
    context: str
    normal: bool
    time_ms: int
    due_ms: int


class Settled(msgspec.Struct, array_like=True, gc=False):
    arm: str
    context: str
    normal: bool
    status: Literal["rewarded", "defaulted", "evicted"]


class RolloutBandit(msgspec.Struct, kw_only=True):
    """One rollout's bandit: policy, arm statistics per context, guardrails, counters,
    and its open joins (``pending``, in arrival order) and remembered settled ids."""

    policy: BanditPolicy | None = None
    policy_version: int = 0
    contexts: dict[str, dict[str, posterior.ArmStats]] = {}
    guardrail: GuardrailState = GuardrailState()
    normal_times: list[int] = []
    counters: dict[str, int] = {}
    last_error: str = ""
    seq: int = 0
    pending: dict[str, Pending] = {}
    settled: dict[str, Settled] = {}

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


class BanditProjection(RolloutProjection[RolloutBandit]):
    """Projection ``bandit``: see the module docstring.

    One snapshot part per rollout, and the event clock as the meta part; a rollout's part
    changes exactly when its published view does, so the KV mirror puts those.
    """

    name = "bandit"

    def __init__(self, max_pending: int = 100_000, max_settled: int = 100_000) -> None:
        super().__init__()
        self.max_pending = max_pending
        self.max_settled = max_settled
        self._due = DueTimers()

    # --- the fold ---------------------------------------------------------------------
    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        if self.advance(event):
            self._expire(self.clock.now_ms, seq)
        if type(event) is Metric:  # a metric moves the clock only (half of the bench workload's events)
            return []
        now = self.clock.now_ms
        if isinstance(event, Decision):
            self._on_decision(event, seq, now)
            return []
        if isinstance(event, Outcome):
            return self._on_outcome(event, seq, now)
        if isinstance(event, BanditConfig):
            self._on_config(event, seq)
        elif isinstance(event, Guardrail) and event.producer != self.name:
            # Our own Guardrail events record what this fold already did: skip the echo.
            state = self.rollouts.setdefault(event.rollout, RolloutBandit())
            state.guardrail = event.after
            self._touch(event.rollout, state, seq)
        return []

    def _touch(self, rollout: str, state: RolloutBandit, seq: int) -> None:
        state.seq = seq
        self._dirty.add(rollout)

    def _on_config(self, event: BanditConfig, seq: int) -> None:
        if event.bandit is None:
            return
        state = self.rollouts.setdefault(event.rollout, RolloutBandit())
        try:
            policy = parse_policy(event.bandit)
        except ValueError as exc:
            state.count("config_errors")
            state.last_error = f"event {event.id}: {exc}"[:500]
            self._touch(event.rollout, state, seq)
            return
        state.policy = policy
        state.policy_version += 1
        for arms in state.contexts.values():
            for gone in [a for a in arms if a not in policy.arms]:
                del arms[gone]
        self._touch(event.rollout, state, seq)

    def _on_decision(self, event: Decision, seq: int, now: int) -> None:
        rollout = event.rollout
        state = self.rollouts.get(rollout)
        if state is None or state.policy is None or event.reason not in LEARNING_REASONS:
            return
        if event.id in state.pending or event.id in state.settled:
            state.count("duplicate_decisions")
            self._touch(rollout, state, seq)
            return
        policy = state.policy
        if event.variant not in policy.arms:
            state.count("unknown_arm")
            self._touch(rollout, state, seq)
            return
        context = event.context or ""
        if context not in state.contexts and len(state.contexts) >= policy.max_contexts:
            state.count("context_overflow")
            context = ""
        arms = state.contexts.setdefault(context, {})
        arms.setdefault(event.variant, posterior.ArmStats()).pulls += 1
        normal = not event.dry_run
        if normal:
            times = prune_normal_times(state.normal_times, now)
            times.append(event.time_ms)
            state.normal_times = times[-MAX_NORMAL_TIMES:]
        due = event.time_ms + int(policy.reward_wait_s * 1000)
        state.pending[event.id] = Pending(event.variant, context, normal, event.time_ms, due)
        self._due.push(due, rollout, event.id)
        while len(state.pending) > self.max_pending:
            self._settle_default(rollout, state, next(iter(state.pending)), "evicted")
        self._touch(rollout, state, seq)

    def _on_outcome(self, event: Outcome, seq: int, now: int) -> list[Event]:
        rollout = event.rollout
        state = self.rollouts.get(rollout)
        if state is None:
            return []
        pend = state.pending.get(event.decision_id)
        if pend is not None:
            self._touch(rollout, state, seq)
            if event.verdict == "inconclusive":
                state.count("inconclusive")
                return []
            del state.pending[event.decision_id]  # its heap entry is skipped when popped
            self._reward(state, pend.context, pend.arm, self._reward_of(state, event))
            self._remember(state, event.decision_id, Settled(pend.arm, pend.context, pend.normal, "rewarded"))
            return self._maybe_cooldown(state, rollout, pend.normal, event, seq, now)
        done = state.settled.get(event.decision_id)
        if done is None:
            if state.policy is not None:
                state.count("unmatched_outcomes")
                self._touch(rollout, state, seq)
            return []
        if done.status == "rewarded":
            state.count("duplicate_outcomes")
        elif event.verdict != "inconclusive":
            arm = state.contexts.get(done.context, {}).get(done.arm)
            if arm is not None:
                arm.late += 1
                arm.late_sum += self._reward_of(state, event)
            state.count("late_outcomes")
        self._touch(rollout, state, seq)
        return self._maybe_cooldown(state, rollout, done.normal, event, seq, now)

    def _maybe_cooldown(
        self, state: RolloutBandit, rollout: str, normal: bool, event: Outcome, seq: int, now: int
    ) -> list[Event]:
        if not (normal and event.verdict == "loss"):
            return []
        before = state.guardrail
        state.guardrail = start_cooldown(before, now)
        if state.guardrail == before:
            return []
        self._touch(rollout, state, seq)
        return [cooldown_event(rollout, before, state.guardrail, now, event.id, self.name)]

    @staticmethod
    def _reward_of(state: RolloutBandit, event: Outcome) -> float:
        if event.reward is not None:
            return event.reward
        if event.verdict == "win":
            return 1.0
        if event.verdict == "loss":
            return 0.0
        return state.policy.neutral_reward if state.policy is not None else 0.5

    def _reward(self, state: RolloutBandit, context: str, arm: str, reward: float) -> None:
        policy = state.policy
        if policy is None or arm not in policy.arms:
            state.count("rewards_for_removed_arms")
            return
        arms = state.contexts.setdefault(context, {})
        stats = arms.setdefault(arm, posterior.ArmStats())
        posterior.discount(list(arms.values()), policy.discount)
        posterior.observe(stats, reward, policy.reward)

    def _settle_default(
        self, rollout: str, state: RolloutBandit, decision_id: str, status: Literal["defaulted", "evicted"]
    ) -> None:
        pend = state.pending.pop(decision_id)
        if state.policy is not None:
            self._reward(state, pend.context, pend.arm, state.policy.default_reward)
            stats = state.contexts.get(pend.context, {}).get(pend.arm)
            if stats is not None:
                stats.defaulted += 1
        if status == "evicted":
            state.count("evicted")
        self._remember(state, decision_id, Settled(pend.arm, pend.context, pend.normal, status))

    def _expire(self, now: int, seq: int) -> None:
        for _due_ms, rollout, decision_id in self._due.due(now):
            state = self.rollouts.get(rollout)
            if state is not None and decision_id in state.pending:
                self._settle_default(rollout, state, decision_id, "defaulted")
                self._touch(rollout, state, seq)

    def _remember(self, state: RolloutBandit, decision_id: str, settled: Settled) -> None:
        state.settled[decision_id] = settled
        while len(state.settled) > self.max_settled:
            del state.settled[next(iter(state.settled))]

    # --- what the SDK reads -----------------------------------------------------------
    def view(self, rollout: str) -> BanditView:
        """The published state of one rollout (KV ``bandit.<rollout>``)."""
        state = self.rollouts[rollout]
        policy = state.policy
        now = self.clock.now_ms
        normal_times = prune_normal_times(state.normal_times, now)
        if policy is None:
            return BanditView(
                rollout=rollout, seq=state.seq, time_ms=now, enabled=False, arms=[], default_arm="",
                weights={}, warm=False, guardrail=state.guardrail, normal_times=normal_times,
                policy_version=state.policy_version,
            )
        enabled = state.guardrail.bandit_enabled
        weights: dict[str, list[float]] = {}
        warm_all = bool(state.contexts)
        # The default context "" is always published: choose() falls back to it for a
        # context the bandit has not seen yet.
        for context in sorted({"", *state.contexts}):
            arms = state.contexts.get(context, {})
            stats = [arms.get(a) or posterior.ArmStats() for a in policy.arms]
            warm = all(s.k >= policy.min_samples for s in stats)
            if context in state.contexts:
                warm_all = warm_all and warm
            if not enabled:
                weights[context] = [1.0 if a == policy.fallback else 0.0 for a in policy.arms]
            elif not warm:
                weights[context] = [1.0 / len(stats)] * len(stats)
            else:
                raw = posterior.thompson_weights(stats, policy.reward, policy.prior_mean, policy.prior_var)
                weights[context] = posterior.apply_floor(raw, policy.floor)
        return BanditView(
            rollout=rollout, seq=state.seq, time_ms=now, enabled=enabled, arms=list(policy.arms),
            default_arm=policy.fallback, weights=weights, warm=warm_all, guardrail=state.guardrail,
            normal_times=normal_times, policy_version=state.policy_version,
        )

    # --- parts (the projection contract: one RolloutBandit per rollout, the clock as meta) ---
    # Dicts keep insertion order, itself a function of the log: ``pending`` and ``settled``
    # are FIFOs whose order must survive a restore, so they are not sorted.
    state_type = RolloutBandit
    clock_is_meta = True

    def clear(self) -> None:
        super().clear()
        self._due = DueTimers()

    def restored(self) -> None:
        self._due.rebuild((p.due_ms, rollout, decision_id) for rollout, state in self.rollouts.items()
                          for decision_id, p in state.pending.items())
