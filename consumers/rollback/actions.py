"""What the rollback projection does to a rollout once it has judged it: the actions.

Each returns (or appends) the command it takes and updates the rollout's state at once,
so the fold judges the next event with the state the command will put in force:

- :func:`act`: a conclusive breach takes the next staged step down, or kills
  (``events.transitions.kill``, through :func:`.commands.kill_switch`);
- :func:`would_kill_now`: a dry-run policy tripped; nothing obeys it;
- :func:`progress`: healthy intervals earn the next progression step up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rollout_engine.consumers.rollback.commands import kill_switch, would_kill
from rollout_engine.consumers.rollback.guards import GuardResult
from rollout_engine.consumers.rollback.progression import (
    Progress,
    canary_move,
    next_down,
    next_up,
    tick_progress,
)
from rollout_engine.consumers.rollback.state import RolloutState
from rollout_engine.events import Event, KillEvidence

__all__ = ["act", "progress", "short_of_samples", "would_kill_now"]


def act(rollout: str, r: RolloutState, judged: list[GuardResult], cause: Event, now: int,
        evidence: Any = None) -> Event:
    """A conclusive breach: the next staged step down, or the kill; the state follows at once.

    ``judged`` is every guard evaluated at this moment: the kill lists each failing one
    and names those short of their minimum sample. ``evidence`` (a
    :class:`.evidence.StatsEvidence`) names the events the failing guards judged in the kill."""
    failing = [x for x in judged if x.status == "fail"]
    target = next_down(r.live.policy, r.control.canary_pct)
    if target is not None and target > 0:
        why = "; ".join(res.describe() for res in failing)
        move = canary_move(rollout, r.control, target, why=why, action="staged_rollback",
                           cause_id=cause.id, time_ms=now)
        r.control, r.live.last_step_ms, r.progress = move.after, now, Progress()
        return move
    proof: Sequence[KillEvidence] = () if evidence is None else \
        evidence.proof(failing, (r.control.baseline, r.control.candidate))
    kill = kill_switch(rollout, r.control, r.live.policy, failing, cause.id, now, short_of_samples(judged), proof)
    r.control, r.killed_ms, r.kills, r.recovered_ms = kill.after, now, r.kills + 1, -1
    r.live.last_step_ms = -1
    return kill

def short_of_samples(judged: list[GuardResult]) -> list[GuardResult]:
    """The regression guards not judged yet for want of samples (the split check, srm, is
    not one: its own minimum is in decisions, and it is shown in status)."""
    return [x for x in judged if x.need and x.kind != "srm"]


def would_kill_now(rollout: str, r: RolloutState, judged: list[GuardResult], cause: Event, now: int) -> Event:
    """The dry-run policy tripped: record it (``judged`` as for :func:`act`); control state is untouched."""
    failing = [x for x in judged if x.status == "fail"]
    run = r.shadow
    assert run is not None
    run.tripped_ms = now
    r.would_kills += 1
    return would_kill(rollout, r.control, run.policy, failing, cause.id, now, short_of_samples(judged))

def progress(rollout: str, r: RolloutState, unhealthy: bool, cause: Event, out: list[Event], now: int) -> None:
    """One evaluation of automatic progression; a step up when it is earned."""
    policy = r.live.policy
    cfg = policy.progression
    if r.killed_ms >= 0 and now - r.killed_ms < policy.hysteresis.hold_down_ms:
        return  # hold-down after a kill: no automatic moves yet
    if r.live.last_step_ms >= 0 or r.control.canary_pct <= 0 or r.control.paused:
        return  # a staged rollback stopped here, nothing to progress, or an operator paused it
    if not tick_progress(r.progress, cfg, now, r.candidate_total, unhealthy):
        return
    target = next_up(cfg, r.control.canary_pct)
    if target is None:
        return
    move = canary_move(rollout, r.control, target, why=f"{cfg.healthy_intervals} healthy intervals",
                       action="progression", cause_id=cause.id, time_ms=now)
    r.control, r.progress = move.after, Progress()
    out.append(move)
