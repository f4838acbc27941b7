"""What the rollback consumer remembers per rollout: the persisted half of the fold.

Plain msgspec Structs (array-like, canonical msgpack), one :class:`RolloutState` per
rollout, stored by the runtime as that rollout's snapshot part together with its
canary-stats fold. Everything here is data (and :func:`rollout_status`, the data an
operator reads); :mod:`.projection` owns the behaviour.
"""

from __future__ import annotations

from typing import Any

import msgspec

from rollout_engine.consumers.rollback.escalation import EscalationBook
from rollout_engine.consumers.rollback.evidence import SMALL_TIME_CAP
from rollout_engine.consumers.rollback.guards import GuardResult
from rollout_engine.consumers.rollback.hysteresis import GuardMachine, carry_over
from rollout_engine.consumers.rollback.policy import DEFAULT_POLICY, Policy
from rollout_engine.consumers.rollback.progression import Progress
from rollout_engine.consumers.rollback.stats_tests import TestResult
from rollout_engine.events import ControlState

__all__ = ["CachedTest", "PolicyRun", "RolloutState", "at_rest", "fresh_run", "judged", "needs_tick", "noted", "rollout_status", "verdict"]


class CachedTest(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A statistical test result and when it ran (tests re-run once per check interval)."""

    at_ms: int
    result: TestResult


class PolicyRun(msgspec.Struct, array_like=True, gc=False):
    """One policy judging one rollout: its machines, cached tests and staged position."""

    policy: Policy
    machines: dict[str, GuardMachine] = msgspec.field(default_factory=dict)
    tests: dict[str, CachedTest] = msgspec.field(default_factory=dict)
    tripped_ms: int = -1
    last_step_ms: int = -1


class RolloutState(msgspec.Struct, array_like=True, gc=False):
    """Everything the consumer knows about one rollout (plus its canary-stats fold)."""

    control: ControlState = ControlState()
    live: PolicyRun = msgspec.field(default_factory=lambda: PolicyRun(DEFAULT_POLICY))
    shadow: PolicyRun | None = None
    now_ms: int = 0
    epoch: int = 0
    killed_ms: int = -1
    srm_pct: float = -1.0
    srm_baseline: int = 0
    srm_candidate: int = 0
    candidate_total: int = 0
    progress: Progress = msgspec.field(default_factory=Progress)
    escalation: EscalationBook = msgspec.field(default_factory=EscalationBook)
    kills: int = 0
    would_kills: int = 0
    policy_error: str = ""
    shape: list[int] = msgspec.field(default_factory=list)  # (last_n, window_ms, time_cap, sketched) of the evidence
    recovered_ms: int = -1  # killed, then every guard recovered by the policy's recovery rule at this time
    shadow_shape: list[int] = msgspec.field(default_factory=list)  # a dry-run policy's own fold; [] = the live one


def fresh_run(run: PolicyRun, now: int) -> PolicyRun:
    """A policy judging a new epoch: fresh machines that keep their flap history (hysteresis.carry_over)."""
    cfg = run.policy.hysteresis
    return PolicyRun(run.policy, {name: carry_over(m, now, cfg) for name, m in run.machines.items()
                                  if m.toggles or m.penalty_until_ms > now or m.alarmed})


def noted(run: PolicyRun, results: list[GuardResult]) -> list[GuardResult]:
    """Record what each guard showed at an action (status reads it), machines untouched."""
    for result in results:
        machine = run.machines.get(result.guard.name)
        if machine is None:
            machine = run.machines[result.guard.name] = GuardMachine()
        machine.last, machine.n, machine.need = result.status, result.have, result.need
    return results


def needs_tick(r: RolloutState) -> bool:
    """Whether a tick can change anything for ``r``.

    A rollout whose guards all read ``last_n`` and are all ``ok`` has nothing that
    time alone moves: no sustain or recovery timer, no staged step, no progression
    interval, no inconclusive limit, no escalation to expire. Skipping it keeps a
    tick's cost proportional to the rollouts in motion, not to all rollouts.
    """
    if r.escalation.armed:
        return True
    live = r.live
    if r.control.kill_switch:  # killed: only a recovery under way moves with time
        return any(m.state == "recovering" for m in live.machines.values())
    policy = live.policy
    return (policy.progression.enabled or live.last_step_ms >= 0 or policy.hysteresis.inconclusive_limit > 0
            or r.shadow is not None or any(m.state != "ok" for m in live.machines.values()))


def at_rest(r: RolloutState) -> bool:
    """Whether ``r`` may leave memory once committed (``consumers.resident``): no time
    window (a tick moves those) and nothing a tick can change (:func:`needs_tick`),
    exactly the rollouts the projection's tick loop passes over. Its next event loads it."""
    timed = r.shape[2] > SMALL_TIME_CAP or bool(r.shadow_shape and r.shadow_shape[2] > SMALL_TIME_CAP)
    return not timed and not needs_tick(r)


def judged(m: GuardMachine) -> str:
    """What a guard shows now, in one word: ``breaching`` (in alarm, or failing and not
    yet sustained: ``pending``), ``recovering``, ``insufficient`` (short of its minimum
    sample), ``inconclusive`` (crossed but not significant), ``hold``, ``ok``, or
    ``not judged`` (no evaluation yet)."""
    if m.state == "alarm":
        return "breaching"
    if m.state in ("pending", "recovering"):
        return m.state
    if m.last == "inconclusive":
        return "insufficient" if m.need else "inconclusive"
    return {"pass": "ok", "hold": "hold", "fail": "breaching", "": "not judged"}.get(m.last, m.last)


def _guards(run: PolicyRun, now_ms: int) -> dict[str, Any]:
    out = {name: {"state": m.state, "since_ms": m.since_ms, "failures": m.failures,
                  "inconclusive": m.inconclusive, "penalized": m.penalized(now_ms), "judged": judged(m),
                  "n": m.n, "need": m.need}
           for name, m in run.machines.items()}
    policy = run.policy
    for guard in policy.all_guards():  # a guard no sample has reached yet is short of all of them
        if guard.name not in out:
            out[guard.name] = {"state": "ok", "since_ms": 0, "failures": 0, "inconclusive": 0, "penalized": False,
                               "judged": "insufficient", "n": 0, "need": guard.min_samples or policy.min_samples}
    return dict(sorted(out.items()))


def rollout_status(rollout: str, r: RolloutState) -> dict[str, Any]:
    """Where a rollout stands, as plain data (KV ``rollback.<rollout>``, the API, dashboards)."""
    return {
        "rollout": rollout,
        "now_ms": r.now_ms,
        "kill_switch": r.control.kill_switch,
        "canary_pct": r.control.canary_pct,
        "paused": r.control.paused,
        "policy": {"name": r.live.policy.name, "version": r.live.policy.version},
        "policy_error": r.policy_error,
        "guards": _guards(r.live, r.now_ms),
        "shadow": None if r.shadow is None else {
            "policy": {"name": r.shadow.policy.name, "version": r.shadow.policy.version},
            "tripped_ms": r.shadow.tripped_ms, "guards": _guards(r.shadow, r.now_ms)},
        "epoch": r.epoch,
        "kills": r.kills,
        "would_kills": r.would_kills,
        "escalations": sorted(r.escalation.armed),
        "candidate_samples": r.candidate_total,
        "recovered_ms": r.recovered_ms if r.control.kill_switch else -1,
        "verdict": verdict(r),
    }


def verdict(r: RolloutState) -> str:
    """One word for people and ``rollout wait --for healthy``.

    ``killed``; ``idle`` (no candidate traffic asked for); ``unhealthy`` (a live guard
    is not ``ok`` or an escalation is armed); ``insufficient`` (fewer candidate
    decisions than the policy's ``min_samples`` since the last epoch); else ``healthy``.
    """
    if r.control.kill_switch:
        return "killed"
    if r.control.canary_pct <= 0:
        return "idle"
    if r.escalation.armed or any(m.state != "ok" for m in r.live.machines.values()):
        return "unhealthy"
    if r.candidate_total < r.live.policy.min_samples:
        return "insufficient"
    return "healthy"
