"""Dry-run against live: what a shadow policy would have done, beside what happened.

A new policy is validated by running it in shadow (``dry_run = true``) for a while, then
comparing its "would have" decisions with the live ones before switching it on. Both are in the log
(``would_kill`` and ``kill_switch`` events), so the comparison is a pure function of
events, usable by reports, the CLI and tests alike.

Example::

    >>> compare_dry_run([])
    {}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rollout_engine.events import Event, KillSwitch, WouldKill

__all__ = ["DryRunComparison", "compare_dry_run"]


@dataclass
class DryRunComparison:
    """One rollout: kills, would-kills, and how they line up in event time.

    ``lead_ms`` holds, for each would-kill matched with a live kill within the match
    window, ``kill.time_ms - would_kill.time_ms`` (positive: the shadow policy would
    have acted earlier).
    """

    rollout: str
    kills: list[int] = field(default_factory=list)
    would_kills: list[int] = field(default_factory=list)
    shadow_policies: list[str] = field(default_factory=list)
    agreed: int = 0
    shadow_only: int = 0
    live_only: int = 0
    lead_ms: list[int] = field(default_factory=list)


def compare_dry_run(events: Iterable[Event], match_window_ms: int = 300_000) -> dict[str, DryRunComparison]:
    """Line up ``would_kill`` and ``kill_switch`` events per rollout (log order in, sorted out)."""
    out: dict[str, DryRunComparison] = {}
    for event in events:
        if isinstance(event, KillSwitch):
            out.setdefault(event.rollout, DryRunComparison(event.rollout)).kills.append(event.time_ms)
        elif isinstance(event, WouldKill):
            c = out.setdefault(event.rollout, DryRunComparison(event.rollout))
            c.would_kills.append(event.time_ms)
            name = f"{event.policy_name} v{event.policy_version}"
            if name not in c.shadow_policies:
                c.shadow_policies.append(name)
    for c in out.values():
        unmatched = sorted(c.kills)
        for would in sorted(c.would_kills):
            near = [k for k in unmatched if abs(k - would) <= match_window_ms]
            if near:
                kill = min(near, key=lambda k: abs(k - would))
                unmatched.remove(kill)
                c.agreed += 1
                c.lead_ms.append(kill - would)
            else:
                c.shadow_only += 1
        c.live_only = len(unmatched)
    return dict(sorted(out.items()))
