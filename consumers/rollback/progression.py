"""Canary moves the rollback consumer makes on its own: staged rollback and progression.

Both produce a :class:`events.ConfigChange` with a deterministic id, so the move is a
command in the log like any other (the control consumer folds it into KV; a replay
emits the same id and JetStream drops the duplicate).

* Staged rollback (``policy.staged.steps``, e.g. ``[50, 25, 0]``): on a conclusive
  breach the canary steps down to the first step below the current percentage; while
  the breach persists it takes the next step every ``hold_down_ms``; the step to 0 is
  the kill switch itself (see the projection). A recovery stops the descent.
* Progression (``policy.progression``): after ``healthy_intervals`` intervals with no
  failing guard and at least ``min_samples`` new candidate samples each, move to the
  next step. An interval with too few samples is extended until it has them; an
  unhealthy one resets the count.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.rollback.policy import Policy, Progression
from rollout_engine.events import ConfigChange, ControlState, command_id, transitions

__all__ = ["Progress", "canary_move", "next_down", "next_up", "tick_progress"]


class Progress(msgspec.Struct, array_like=True, gc=False):
    """Where a rollout is in its current progression step."""

    interval_start_ms: int = -1
    candidate_at_start: int = 0
    healthy: int = 0
    bad: bool = False


def next_down(policy: Policy, pct: float) -> float | None:
    """The staged-rollback step after ``pct`` (None when there is no staged rollback)."""
    below = [s for s in policy.staged.steps if s < pct]
    return below[0] if below else None


def next_up(cfg: Progression, pct: float) -> float | None:
    """The progression step after ``pct``, or None at the top."""
    above = [s for s in cfg.steps if s > pct]
    return above[0] if above else None


def tick_progress(p: Progress, cfg: Progression, now_ms: int, candidate_total: int, unhealthy: bool) -> bool:
    """Account one evaluation; return True when the step has earned a move up."""
    if p.interval_start_ms < 0:
        p.interval_start_ms, p.candidate_at_start = now_ms, candidate_total
    p.bad = p.bad or unhealthy
    if now_ms - p.interval_start_ms < cfg.interval_ms:
        return False
    if p.bad:
        p.healthy = 0
    elif candidate_total - p.candidate_at_start >= cfg.min_samples:
        p.healthy += 1
    else:
        return False  # too few samples: the interval (and so the step) is extended
    p.interval_start_ms, p.candidate_at_start, p.bad = now_ms, candidate_total, False
    if p.healthy >= cfg.healthy_intervals:
        p.healthy = 0
        return True
    return False


def canary_move(rollout: str, before: ControlState, pct: float, *, why: str, action: str,
                cause_id: str, time_ms: int) -> ConfigChange:
    """The ConfigChange that moves the canary to ``pct`` (deterministic id from the cause)."""
    return transitions.config_command(
        before,
        canary_pct=pct,
        id=command_id(action, rollout, cause_id, f"{pct:g}"),
        rollout=rollout,
        time_ms=time_ms,
        producer="rollback",
        actor="rollback",
        reason=f"{action}: canary {before.canary_pct:g} -> {pct:g}% ({why})"[:1024],
    )
