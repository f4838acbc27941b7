"""The engine's verdict on a rollout, for deployment tools: advance, halt or inconclusive.

Argo Rollouts and Flagger move traffic step by step and ask, between steps, whether to
go on. This module answers from what the engine already decided, never from a new
computation: the control state in the log (a kill switch is final, whoever set it) and
the rollback consumer's published evaluation (``rollback.<rollout>`` in KV: each guard's
hysteresis state). So the tool sees the same statistics, sustain and recovery rules
that fire kill switches, and a rollout the engine would kill is never advanced.

Rules, in order:

1. the kill switch is on: ``halt`` (with the breaches of the kill switch);
2. a live guard is in ``alarm`` or ``recovering`` (breaching now, or not yet recovered
   long enough: a staged rollback or a dry-run-free alarm the kill has not reached):
   ``halt``;
3. no evaluation yet (the rollback consumer has not judged this rollout), a guard
   ``pending`` (failing, not yet sustained), a guard whose latest check was inconclusive
   (too few samples or not significant), or an armed escalation (a human should look):
   ``inconclusive``. Missing data is never a failure (Flagger counted "no values" as
   failed checks and rolled healthy releases back);
4. otherwise ``advance``.

:func:`judge` is pure (unit-tested); :func:`read_verdict` gathers its inputs over NATS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from nats.js import JetStreamContext

from rollout_engine.engine.api.control_log import ControlView, known_rollouts, read_control
from rollout_engine.events import subjects

__all__ = ["ADVANCE", "HALT", "INCONCLUSIVE", "UnknownRollout", "Verdict", "judge", "read_verdict"]

ADVANCE, HALT, INCONCLUSIVE = "advance", "halt", "inconclusive"
Outcome = Literal["advance", "halt", "inconclusive"]
_BREACHING = ("alarm", "recovering")


class UnknownRollout(LookupError):
    """Nothing in the log names this rollout (a typo, or a rollout not started yet)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer and everything it rests on (the gate's JSON body)."""

    rollout: str
    verdict: Outcome
    reason: str
    kill_switch: bool
    canary_pct: float
    config_version: int
    control_seq: int
    guards: dict[str, str] = field(default_factory=dict)
    breaches: list[dict[str, Any]] = field(default_factory=list)
    escalations: list[str] = field(default_factory=list)
    evaluated_ms: int | None = None

    def body(self, checked_ms: int | None = None) -> dict[str, Any]:
        """The JSON document served: ``healthy`` is ``verdict == "advance"``, for tools
        whose conditions prefer a boolean."""
        return {
            "rollout": self.rollout,
            "verdict": self.verdict,
            "healthy": self.verdict == ADVANCE,
            "reason": self.reason,
            "kill_switch": self.kill_switch,
            "canary_pct": self.canary_pct,
            "config_version": self.config_version,
            "control_seq": self.control_seq,
            "guards": self.guards,
            "breaches": self.breaches,
            "escalations": self.escalations,
            "evaluated_ms": self.evaluated_ms,
            "checked_ms": checked_ms if checked_ms is not None else time.time_ns() // 1_000_000,
        }


_UNSURE = ("insufficient", "inconclusive", "not judged")


def _unsure(guard: dict[str, Any]) -> bool:
    """A guard without a verdict yet: short of its minimum sample (``insufficient n/min``,
    also listed for a guard no sample has reached), not significant, never evaluated, or
    inconclusive at its latest check."""
    return str(guard.get("judged", "")) in _UNSURE or bool(guard.get("inconclusive"))


def judge(view: ControlView, evaluation: dict[str, Any] | None) -> Verdict:
    """The verdict from the control state in the log and the rollback consumer's evaluation."""
    state, command = view.state, view.command
    guards = {name: str(g.get("state", "?")) for name, g in sorted(((evaluation or {}).get("guards") or {}).items())}
    base = {
        "rollout": view.rollout, "kill_switch": state.kill_switch, "canary_pct": state.canary_pct,
        "config_version": state.config_version, "control_seq": view.command_seq, "guards": guards,
        "escalations": list((evaluation or {}).get("escalations") or []),
        "evaluated_ms": (evaluation or {}).get("now_ms"),
    }
    if state.kill_switch:
        breaches = [msgspec.to_builtins(b) for b in getattr(command, "breaches", None) or []]
        why = getattr(command, "reason", "") or "kill switch on"
        return Verdict(verdict=HALT, reason=f"kill switch: {why}", breaches=breaches, **base)
    breaching = [name for name, s in guards.items() if s in _BREACHING]
    if breaching:
        return Verdict(verdict=HALT, reason=f"guard(s) breaching: {', '.join(breaching)}", **base)
    if not evaluation or not guards:
        return Verdict(verdict=INCONCLUSIVE, reason="not evaluated yet: no rollback evaluation of this rollout "
                       "(is the rollback consumer running, and has the rollout traffic?)", **base)
    waiting = [name for name, s in guards.items() if s == "pending"]
    if waiting:
        return Verdict(verdict=INCONCLUSIVE, reason=f"guard(s) failing, not yet sustained: {', '.join(waiting)}", **base)
    unsure = [name for name, g in sorted(evaluation["guards"].items()) if _unsure(g)]
    if unsure:
        return Verdict(verdict=INCONCLUSIVE, reason=f"not enough evidence yet for: {', '.join(unsure)}", **base)
    if base["escalations"]:
        return Verdict(verdict=INCONCLUSIVE, reason=f"escalation armed ({', '.join(base['escalations'])}): "
                       "a human should look before the rollout goes on", **base)
    return Verdict(verdict=ADVANCE, reason=f"every guard passes ({', '.join(guards)})", **base)


async def read_verdict(js: JetStreamContext, rollout: str) -> Verdict:
    """Read the control state (log) and the evaluation (KV), then :func:`judge`.

    Raises :class:`UnknownRollout` when the log has nothing of ``rollout``.
    """
    if not await known_rollouts(js, rollout):
        raise UnknownRollout(rollout)
    view = await read_control(js, rollout)
    evaluation: dict[str, Any] | None = None
    try:
        kv = await js.key_value(subjects.STATE_BUCKET)
        entry = await kv.get(subjects.kv_key("rollback", rollout))
        decoded = msgspec.json.decode(entry.value or b"{}")
        evaluation = decoded if isinstance(decoded, dict) and decoded else None
    except Exception:  # no evaluation published yet: inconclusive, never a failure
        evaluation = None
    return judge(view, evaluation)
