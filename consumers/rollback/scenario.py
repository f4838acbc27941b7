"""Synthetic canary traffic and control commands, for simulated-canary cases.

A regression detector is tested on known cases, e.g. a baseline at quality 95 and a
candidate at 85 over 50 candidate samples. Here such cases are *events*: each run is a
Decision, an Outcome with its quality and two Metrics (``latency_ms``, ``cost_cents``),
split between baseline and candidate exactly at ``canary_pct`` (no random sample-ratio
mismatch). Tests, the benchmark and the demo publish them through a real nats-server.

Example::

    >>> events = runs("demo", 10, canary_pct=50, candidate=Profile(quality=80.0))
    >>> sum(1 for e in events if getattr(e, "variant", "") == "candidate") // 4
    5
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Decision,
    Event,
    Metric,
    Outcome,
    Resume,
    new_event_id,
    transitions,
)

__all__ = ["T0", "Profile", "policy_change", "resume", "runs"]

T0 = 1_700_000_000_000
_INITIAL = ControlState()


@dataclass(frozen=True, slots=True)
class Profile:
    """What one variant's runs look like: quality points, latency ms, cost cents."""

    quality: float = 95.0
    latency_ms: float = 900.0
    cost_cents: float = 2.0


def runs(
    rollout: str,
    n: int,
    *,
    canary_pct: float = 50.0,
    baseline: Profile = Profile(),
    candidate: Profile = Profile(),
    t0: int = T0,
    step_ms: int = 10,
    start: int = 0,
    names: tuple[str, str] = ("baseline", "candidate"),
) -> list[Event]:
    """``n`` runs, four events each, the candidate getting exactly ``canary_pct`` percent.

    ``start`` continues a sequence (the split and times pick up where it left off).
    """
    out: list[Event] = []
    for i in range(start, start + n):
        is_candidate = int((i + 1) * canary_pct / 100) > int(i * canary_pct / 100)
        profile, variant = (candidate, names[1]) if is_candidate else (baseline, names[0])
        t = t0 + i * step_ms
        decision_id = new_event_id(t)
        common = {"rollout": rollout, "time_ms": t, "producer": "sim"}
        out.append(Decision(id=decision_id, unit=f"user-{i}", variant=variant,
                            reason="canary" if is_candidate else "default", canary_pct=canary_pct,
                            config_version=1, propensity=canary_pct / 100, **common))
        out.append(Outcome(id=new_event_id(t), decision_id=decision_id, variant=variant, verdict="neutral",
                           quality=profile.quality, **common))
        out.append(Metric(id=new_event_id(t), variant=variant, name="latency_ms", value=profile.latency_ms,
                          unit="ms", decision_id=decision_id, **common))
        out.append(Metric(id=new_event_id(t), variant=variant, name="cost_cents", value=profile.cost_cents,
                          unit="cents", decision_id=decision_id, **common))
    return out


def policy_change(rollout: str, policy: dict | None, *, before: ControlState = _INITIAL,
                  canary_pct: float | None = None, time_ms: int = T0 - 1, actor: str = "operator",
                  reason: str = "policy") -> ConfigChange:
    """A ConfigChange carrying a policy document (version = before's + 1) and/or a new canary."""
    return transitions.config_command(before, canary_pct=canary_pct, policy=policy, id=new_event_id(time_ms),
                                      rollout=rollout, time_ms=time_ms, producer="sim", actor=actor, reason=reason)


def resume(rollout: str, before: ControlState, canary_pct: float, *, time_ms: int,
           actor: str = "operator", reason: str = "fix_applied") -> Resume:
    """The runbook's manual re-enable: kill switch off, canary back at ``canary_pct``."""
    return transitions.resume_command(before, canary_pct, id=new_event_id(time_ms), rollout=rollout,
                                      time_ms=time_ms, producer="sim", actor=actor, reason=reason)
