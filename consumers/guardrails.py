"""The self-learning guardrails as a pure fold: execution modes, the normal-mode canary, the
loss cooldown, and the switches that disable the bandit or the executor.

The state per rollout is a :class:`events.GuardrailState`. Operators change it with a
``Guardrail`` event (its ``after`` wins, like every control command); the bandit consumer
starts a cooldown itself when a ``loss`` follows a normal-mode decision, and records that
as a ``Guardrail`` event too, so the log says who forced safe mode, when and why.

``choose()`` in the SDK reads the published state and calls :func:`decide_mode`; the
consumer and the SDK therefore apply one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from rollout_engine.events import Guardrail, GuardrailState, command_id

__all__ = [
    "HOUR_MS",
    "ModeDecision",
    "cooldown_event",
    "decide_mode",
    "prune_normal_times",
    "start_cooldown",
]

HOUR_MS = 3_600_000
Mode = Literal["safe", "normal"]


@dataclass(frozen=True, slots=True)
class ModeDecision:
    """The execution mode granted, and why it differs from the one asked for."""

    mode: Mode
    execute: bool
    forced: bool
    why: str


def prune_normal_times(times: list[int], now_ms: int) -> list[int]:
    """Normal-mode decision times still inside the sliding hour."""
    return [t for t in times if t > now_ms - HOUR_MS]


def decide_mode(
    state: GuardrailState,
    now_ms: int,
    normal_times: list[int],
    *,
    requested: Mode | None = None,
    priority: float = 0.0,
    risk: str = "low",
) -> ModeDecision:
    """The mode a choice runs in, under the guardrail rules, in the order the runbook lists.

    - executor disabled: nothing executes (safe, ``execute=False``);
    - safe unless normal is asked for (``requested``, else ``mode_default``);
    - normal needs: the normal canary on, no cooldown running, ``priority >=
      normal_min_priority``, ``risk`` allowed, and fewer than ``normal_max_per_hour``
      normal-mode decisions in the last hour (event time).
    """
    if not state.executor_enabled:
        return ModeDecision("safe", False, requested == "normal", "executor disabled")
    want = requested or state.mode_default
    if want == "safe":
        return ModeDecision("safe", True, False, "safe mode")
    if now_ms < state.cooldown_until_ms:
        return ModeDecision("safe", True, True, f"cooldown until {state.cooldown_until_ms}")
    if not state.normal_canary:
        return ModeDecision("safe", True, True, "normal-mode canary disabled")
    if priority < state.normal_min_priority:
        return ModeDecision("safe", True, True, f"priority {priority} < {state.normal_min_priority}")
    if risk not in state.normal_allowed_risk:
        return ModeDecision("safe", True, True, f"risk {risk!r} not in {list(state.normal_allowed_risk)}")
    recent = len(prune_normal_times(normal_times, now_ms))
    if recent >= state.normal_max_per_hour:
        return ModeDecision("safe", True, True, f"{recent} normal runs in the last hour (max {state.normal_max_per_hour})")
    return ModeDecision("normal", True, False, "normal-mode canary")


def start_cooldown(state: GuardrailState, now_ms: int) -> GuardrailState:
    """The state after a loss in normal mode: cooldown from ``now_ms`` (never shortened)."""
    until = max(state.cooldown_until_ms, now_ms + state.cooldown_s * 1000)
    return msgspec.structs.replace(state, cooldown_until_ms=until)


def cooldown_event(
    rollout: str, before: GuardrailState, after: GuardrailState, now_ms: int, outcome_id: str, producer: str
) -> Guardrail:
    """The audit record of an automatic cooldown; its id derives from the loss outcome."""
    return Guardrail(
        id=command_id("cooldown", rollout, outcome_id),
        rollout=rollout,
        time_ms=now_ms,
        producer=producer,
        actor=producer,
        reason=f"loss in normal mode: forced safe for {after.cooldown_s}s",
        before=before,
        after=after,
        cause_id=outcome_id,
    )
