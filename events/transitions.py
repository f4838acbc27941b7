"""The control vocabulary: how a rollout's :class:`ControlState` changes, as pure functions.

Three transitions, one name each, used by every path that changes control state (the
operator API, the rollback consumer's automatic kill, staged rollback and progression,
backtests and test scenarios):

- :func:`kill`: stop the candidate now (canary to 0, kill switch on). The act is
  *kill*; the command carrying it is a :class:`KillSwitch` on ``ro.ctl.<rollout>.kill_switch``;
  "rollback" names the consumer that decides it automatically, not the act;
- :func:`resume`: lift the kill switch, candidate back at a percentage;
- :func:`configure`: a canary step (an operator's ``set`` or ``promote``, a progression
  step up, a staged step down), a new policy, and/or automatic progression paused or
  unpaused, in one command.

Operators reach them through the API's verbs (``abort`` kills, ``retry`` and
``resume`` resume, ``promote``, ``pause``, ``unpause`` and ``set`` configure), recorded
in the command's ``action``; the rollback consumer's own commands carry no action.

**The config_version rule.** Every transition that changes control state adds exactly 1
to ``config_version``; a transition that would change nothing returns the state as it
was (and no command is published). ``config_version`` is the version of the state
services obey, stamped on every Decision, so "which state was this decision made
under" must have one answer whoever changed it: before this rule an automatic kill
kept the version while an operator's kill added 1, and two different states carried
the same number.

The ``*_command`` builders wrap a transition in the command that carries it (state
before and after, who, why), so no caller computes an ``after`` by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from rollout_engine.events.schema import (
    Breach,
    ConfigChange,
    ControlState,
    KillEvidence,
    KillSwitch,
    OperatorAction,
    Resume,
)

__all__ = ["PHASES", "PHASE_ALIASES", "config_command", "configure", "kill", "kill_command", "phase", "resume",
           "resume_command"]

PHASES = ("aborted", "paused", "promoted", "progressing", "idle")
"""Where a control state leaves a rollout, in Argo Rollouts' words (:func:`phase`)."""
PHASE_ALIASES = {"killed": "aborted", "running": "progressing"}
"""The words operators also use: *killed* is what :func:`kill` leaves, *running* a canary between 0 and 100%."""


def _changed(before: ControlState, after: ControlState) -> ControlState:
    """``after`` with ``config_version`` one past ``before``'s, or ``before`` when nothing changed."""
    if after == before:
        return before
    return msgspec.structs.replace(after, config_version=before.config_version + 1)


def kill(before: ControlState) -> ControlState:
    """Canary to 0 and kill switch on."""
    return _changed(before, msgspec.structs.replace(before, canary_pct=0.0, kill_switch=True))


def resume(before: ControlState, canary_pct: float) -> ControlState:
    """Kill switch off, candidate back at ``canary_pct``."""
    return _changed(before, msgspec.structs.replace(before, canary_pct=canary_pct, kill_switch=False))


def configure(before: ControlState, *, canary_pct: float | None = None, new_policy: bool = False,
              paused: bool | None = None) -> ControlState:
    """The canary at ``canary_pct``, a new policy (``policy_version`` + 1) and/or automatic
    progression ``paused``; the kill switch is unchanged."""
    after = msgspec.structs.replace(
        before,
        canary_pct=before.canary_pct if canary_pct is None else canary_pct,
        policy_version=before.policy_version + (1 if new_policy else 0),
        paused=before.paused if paused is None else paused,
    )
    return _changed(before, after)


def phase(state: ControlState) -> str:
    """The one word for a state, first match wins: ``aborted`` (kill switch on), ``paused``
    (automatic progression stopped by an operator), ``promoted`` (candidate at 100%),
    ``progressing`` (between 0 and 100%), ``idle`` (no candidate traffic asked for).

    ``rollout status --state`` filters on it and ``rollout wait`` reports it, so both
    name a rollout the same way.
    """
    if state.kill_switch:
        return "aborted"
    if state.paused:
        return "paused"
    if state.canary_pct >= 100.0:
        return "promoted"
    return "progressing" if state.canary_pct > 0 else "idle"


def kill_command(before: ControlState, *, id: str, rollout: str, time_ms: int, producer: str, actor: str,
                 reason: str, breaches: Sequence[Breach] = (), cause_id: str | None = None,
                 action: OperatorAction | None = None, evidence: Sequence[KillEvidence] = ()) -> KillSwitch:
    """The :class:`KillSwitch` that kills ``rollout`` from ``before`` (``evidence``: the events judged)."""
    return KillSwitch(id=id, rollout=rollout, time_ms=time_ms, producer=producer, actor=actor, reason=reason,
                      before=before, after=kill(before), breaches=list(breaches), cause_id=cause_id, action=action,
                      evidence=list(evidence))


def resume_command(before: ControlState, canary_pct: float, *, id: str, rollout: str, time_ms: int, producer: str,
                   actor: str, reason: str, action: OperatorAction | None = None) -> Resume:
    """The :class:`Resume` that re-enables ``rollout`` at ``canary_pct``."""
    return Resume(id=id, rollout=rollout, time_ms=time_ms, producer=producer, actor=actor, reason=reason,
                  before=before, after=resume(before, canary_pct), action=action)


def config_command(before: ControlState, *, id: str, rollout: str, time_ms: int, producer: str, actor: str,
                   reason: str, canary_pct: float | None = None, policy: dict[str, Any] | None = None,
                   paused: bool | None = None, action: OperatorAction | None = None) -> ConfigChange:
    """The :class:`ConfigChange` that moves the canary, carries a new ``policy`` document
    and/or pauses or unpauses automatic progression."""
    after = configure(before, canary_pct=canary_pct, new_policy=policy is not None, paused=paused)
    return ConfigChange(id=id, rollout=rollout, time_ms=time_ms, producer=producer, actor=actor, reason=reason,
                        before=before, after=after, policy=policy, action=action)
