"""The events the rollback consumer emits, built from what caused them.

Each id derives from the cause (``command_id("kill", rollout, cause_id)``), so a refold
of the same log emits the same bytes and JetStream's ``Nats-Msg-Id`` (the engine's keyed
id of it, consumers/relay.py) drops repeats; each
reason is the breach lines joined (``quality (baseline: 95.0, candidate: 82.0, drop:
13.0)``, what an operator needs to see why), then the policy, within the contract's
1,024 characters (a command a service cannot decode would be no command at all).

The kill itself is the contract's transition (``events.transitions.kill``), the same an
operator's kill through the API makes, so both give the same after-state (config_version + 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout_engine.consumers.rollback.guards import GuardResult
from rollout_engine.consumers.rollback.policy import Policy
from rollout_engine.events import (
    ControlState,
    Escalation,
    KillEvidence,
    KillSwitch,
    WouldKill,
    command_id,
    transitions,
)
from rollout_engine.events.schema import MAX_BREACHES

__all__ = ["ACTOR", "escalation", "kill_switch", "reason", "would_kill"]

ACTOR = "rollback"


def reason(failing: list[GuardResult], suffix: str, short: Sequence[GuardResult] = ()) -> str:
    """``quality (baseline: 95.0, candidate: 82.0, drop: 13.0); ... [policy NAME vN]``.

    ``short`` are the guards not judged yet for want of samples (``insufficient:
    latency 29/30, cost 29/30``): a kill by the first guard to reach its minimum names
    them, so nobody reads their silence as health."""
    why = "; ".join(res.describe() for res in failing)
    if short:
        suffix = ("; insufficient: " + ", ".join(res.insufficient for res in short))[:400] + suffix
    return why[: 1024 - len(suffix)] + suffix


def kill_switch(rollout: str, before: ControlState, policy: Policy, failing: list[GuardResult],
                cause_id: str, now: int, short: Sequence[GuardResult] = (),
                evidence: Sequence[KillEvidence] = ()) -> KillSwitch:
    """The kill (``events.transitions.kill``), with the breaches that caused it and the
    events they judged (``evidence``, ``consumers/rollback/proof.py``)."""
    return transitions.kill_command(
        before,
        id=command_id("kill", rollout, cause_id),
        rollout=rollout,
        time_ms=now,
        producer=ACTOR,
        actor=ACTOR,
        reason=reason(failing, f" [policy {policy.name} v{policy.version}]", short),
        breaches=[res.breach() for res in failing][:MAX_BREACHES],
        cause_id=cause_id,
        evidence=evidence,
    )


def would_kill(rollout: str, control: ControlState, policy: Policy, failing: list[GuardResult],
               cause_id: str, now: int, short: Sequence[GuardResult] = ()) -> WouldKill:
    """What a dry-run policy would have done here (the kill's after-state); nothing obeys it."""
    return WouldKill(
        id=command_id("would_kill", rollout, policy.name, policy.version, cause_id),
        rollout=rollout,
        time_ms=now,
        producer=ACTOR,
        actor=ACTOR,
        reason=reason(failing, f" [dry-run policy {policy.name} v{policy.version}]", short),
        policy_name=policy.name,
        policy_version=policy.version,
        before=control,
        after=transitions.kill(control),
        breaches=[res.breach() for res in failing][:MAX_BREACHES],
        cause_id=cause_id,
    )


def escalation(rollout: str, trigger: str, state: str, count: int, expires_ms: int, text: str,
               cause_id: str, now: int, policy_version: int) -> Escalation:
    """An escalation flag armed or expired (a guard that breached ``count`` times within the
    policy's window: a human should look), or an inconclusive-limit notice."""
    return Escalation(
        id=command_id("escalation", rollout, trigger, state, cause_id),
        rollout=rollout,
        time_ms=now,
        producer=ACTOR,
        actor=ACTOR,
        reason=text[:1024],
        trigger=trigger,
        state=state,  # type: ignore[arg-type]
        count=count,
        expires_ms=expires_ms,
        policy_version=policy_version,
        cause_id=cause_id,
    )
