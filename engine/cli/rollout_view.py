"""One rollout as a watcher sees it: a small fold of what is pushed to it, with no I/O.

``rollout status --watch`` and ``rollout wait`` start from the API's ``status`` reply
and then fold what NATS pushes: control commands (``ro.ctl.<rollout>.*``, with their
stream sequence), canary-stats snapshots (``ro.stats.<rollout>``) and the rollback
consumer's evaluation (``ro.stats.<rollout>.eval``). A command older than the one
already folded is ignored, so the initial reply and the replayed "last per subject"
commands never move the view backwards.

The phase names follow Argo Rollouts: ``aborted`` (kill switch on), ``paused``
(automatic progression stopped by an operator), ``promoted`` (candidate at 100%),
``progressing`` (between 0 and 100%), ``idle`` (no candidate traffic asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from rollout_engine.consumers.rollback.policy import Progression
from rollout_engine.events import (
    COMMAND_TYPES,
    ConfigChange,
    ControlState,
    Escalation,
    KillSwitch,
    kind_of,
    transitions,
)

__all__ = ["PHASES", "RolloutView"]

PHASES = transitions.PHASES
_DEFAULT_STEPS = list(Progression().steps)


@dataclass
class RolloutView:
    """What is known of one rollout now; every ``apply_*`` returns whether it changed."""

    rollout: str
    control: dict[str, Any] = field(default_factory=dict)
    command_seq: int = 0
    last_command: dict[str, Any] | None = None
    steps: list[float] = field(default_factory=list)
    progression_enabled: bool = False
    stats: Any = None
    evaluation: Any = None
    escalation: dict[str, Any] | None = None

    @classmethod
    def from_status(cls, reply: dict[str, Any]) -> RolloutView:
        """The view of an API ``status`` reply (``engine/api/service.py``)."""
        last = reply.get("last_command")
        progression = reply.get("progression") or {}
        return cls(rollout=reply["rollout"], control=dict(reply["control"]),
                   command_seq=int(last["seq"]) if last else 0, last_command=last,
                   steps=[float(s) for s in progression.get("steps", [])],
                   progression_enabled=bool(progression.get("enabled")),
                   stats=reply.get("stats"), evaluation=reply.get("evaluation"))

    # --- folding ----------------------------------------------------------------------
    def apply_event(self, event: Any, seq: int) -> bool:
        """Fold one control-subject event found at stream sequence ``seq``."""
        if isinstance(event, COMMAND_TYPES):
            if seq <= self.command_seq:
                return False
            self.command_seq = seq
            self.control = msgspec.to_builtins(event.after)
            self.last_command = {"kind": kind_of(event), "id": event.id, "seq": seq, "time_ms": event.time_ms,
                                 "actor": event.actor, "reason": event.reason, "action": event.action,
                                 "before": msgspec.to_builtins(event.before)}
            if isinstance(event, KillSwitch) and event.breaches:
                self.last_command["breaches"] = msgspec.to_builtins(event.breaches)
            if isinstance(event, ConfigChange) and event.policy is not None and not event.policy.get("dry_run"):
                progression = event.policy.get("progression") or {}
                steps = progression.get("steps", _DEFAULT_STEPS)  # a policy without them has the defaults
                if isinstance(steps, list) and all(isinstance(s, int | float) for s in steps):
                    self.steps = [float(s) for s in steps]
                self.progression_enabled = progression.get("enabled") is True
            return True
        if isinstance(event, Escalation):
            self.escalation = {"trigger": event.trigger, "state": event.state, "seq": seq, "reason": event.reason}
            return True
        return False

    def apply_stats(self, document: Any) -> bool:
        if document == self.stats:
            return False
        self.stats = document
        return True

    def apply_evaluation(self, document: Any) -> bool:
        if document == self.evaluation:
            return False
        self.evaluation = document
        return True

    # --- reading ----------------------------------------------------------------------
    @property
    def killed(self) -> bool:
        return bool(self.control.get("kill_switch"))

    @property
    def canary_pct(self) -> float:
        return float(self.control.get("canary_pct", 0.0))

    @property
    def phase(self) -> str:
        """``events.transitions.phase``: the word ``rollout status --state`` filters on."""
        return transitions.phase(ControlState(canary_pct=self.canary_pct, kill_switch=self.killed,
                                              paused=bool(self.control.get("paused"))))

    @property
    def step(self) -> int:
        """1-based progression step the canary has reached (0: below the first, or aborted)."""
        if self.killed:
            return 0
        return sum(1 for s in self.steps if s <= self.canary_pct)

    @property
    def verdict(self) -> str | None:
        """The rollback consumer's last word (``healthy``, ``insufficient``...), if any."""
        evaluation = self.evaluation
        return evaluation.get("verdict") if isinstance(evaluation, dict) else None

    def summary(self) -> dict[str, Any]:
        """The JSON of one ``--watch --json`` line, without the change that caused it."""
        return {"rollout": self.rollout, "phase": self.phase, "step": self.step, "of": len(self.steps),
                "verdict": self.verdict, "control": self.control, "last_command": self.last_command}

    def status_reply(self) -> dict[str, Any]:
        """The view in the shape of the API ``status`` reply (for the text printer)."""
        return {"rollout": self.rollout, "control": self.control, "last_command": self.last_command,
                "stats": self.stats, "evaluation": self.evaluation,
                "progression": {"enabled": self.progression_enabled, "steps": self.steps, "step": self.step,
                                "of": len(self.steps), "paused": bool(self.control.get("paused"))}}
