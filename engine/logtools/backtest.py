"""Backtest: run a candidate rollback policy over a recorded log; on-demand evaluation.

The rollback consumer is a pure fold, so a policy can be judged against any recorded
log offline. For each policy run (the live one, as the log configured it, and the
candidate from a TOML file) the log is folded through a fresh
:class:`~consumers.rollback.projection.RollbackProjection` with the recorded automatic
commands taken out, and the run's own commands fed back in their place, exactly as the
live consumer's commands come back through the log. Operators' commands stay.

Per rollout the report says when the live policy killed in the recording, when the
replayed live policy kills (it must be the same moment: a check on determinism), and
when the candidate would have killed. Where outcomes tell (at least
:data:`MIN_OUTCOMES` candidate outcomes with quality or verdicts), each rollout is
labelled *regressed* or *healthy* over the whole recording, giving false-kill (killed a
healthy candidate) and missed-regression (did not kill a regressed one) counts:
regressed means the candidate's mean quality is more than ``quality_drop`` points below
the baseline's, or its loss rate is higher by more than ``loss_margin`` (absolute) with
a two-proportion z-test below ``alpha``.

``evaluate_rollout`` is the API's on-demand ``evaluate``: the same fold over one
rollout's log, its live status, and -- when the fold decides a kill that is not in the
log (the rollback consumer is down or behind) -- that kill published with its
deterministic id.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from scipy.stats import norm

from rollout_engine.consumers.rollback.policy import (
    Policy,
    load_policy,
    load_policy_file,
    policy_document,
)
from rollout_engine.consumers.rollback.projection import ACTOR, RollbackProjection
from rollout_engine.events import (
    AnyEvent,
    ConfigChange,
    ControlState,
    Event,
    KillSwitch,
    Outcome,
    Resume,
    decode_from_log,
    new_event_id,
)

__all__ = ["MIN_OUTCOMES", "BacktestReport", "PolicyRunResult", "backtest", "evaluate_rollout", "load_candidate"]

MIN_OUTCOMES = 30
_COMMANDS = (KillSwitch, Resume, ConfigChange)


@dataclass
class PolicyRunResult:
    """One policy folded over the log: kill moments per rollout (event time, ms)."""

    name: str
    kills: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    commands: list[Event] = field(default_factory=list)


@dataclass
class BacktestReport:
    """The comparison, per rollout and in total."""

    candidate_policy: str
    rollouts: list[dict[str, Any]]
    totals: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"candidate_policy": self.candidate_policy, "rollouts": self.rollouts, "totals": self.totals}


def load_candidate(path: str) -> Policy:
    """The candidate policy, validated (a malformed file fails here, before any work)."""
    return load_policy_file(path)


def _is_auto(event: AnyEvent) -> bool:
    return isinstance(event, _COMMANDS) and (event.actor == ACTOR or event.producer == ACTOR)


def recorded_kills(events: Iterable[tuple[int, AnyEvent]]) -> dict[str, list[int]]:
    """Automatic kill moments as they were recorded in the log."""
    kills: dict[str, list[int]] = {}
    for _seq, event in events:
        if isinstance(event, KillSwitch) and _is_auto(event):
            kills.setdefault(event.rollout, []).append(event.time_ms)
    return kills


def run_policy(events: list[tuple[int, AnyEvent]], name: str, policy: Policy | None = None) -> PolicyRunResult:
    """Fold the log with recorded automatic commands replaced by this run's own.

    ``policy`` None: the live policy as the log configured it. Otherwise the candidate
    replaces every policy in the log, from each rollout's first event on.
    """
    projection = RollbackProjection()
    result = PolicyRunResult(name)
    document = policy_document(policy) if policy is not None else None
    seeded: set[str] = set()
    for seq, event in events:
        if _is_auto(event):
            continue
        if document is not None:
            if isinstance(event, ConfigChange) and event.policy is not None:
                event = msgspec.structs.replace(event, policy=None)
            rollout = event.rollout
            if rollout not in seeded and not rollout.startswith("_"):
                seeded.add(rollout)
                state = projection.rollouts[rollout].control if rollout in projection.rollouts else ControlState()
                after = msgspec.structs.replace(state, policy_version=state.policy_version + 1)
                seed = ConfigChange(id=new_event_id(event.time_ms), rollout=rollout, time_ms=event.time_ms,
                                    producer="backtest", actor="backtest", reason=f"candidate policy {name}",
                                    before=state, after=after, policy=document)
                projection.apply(seed, seq)
        pending = projection.apply(event, seq)
        while pending:
            command = pending.pop(0)
            result.commands.append(command)
            if isinstance(command, KillSwitch):
                result.kills.setdefault(command.rollout, []).append(command.time_ms)
                result.reasons.setdefault(command.rollout, []).append(command.reason)
            pending.extend(projection.apply(command, seq))
    return result


def _truth(events: list[tuple[int, AnyEvent]], quality_drop: float, loss_margin: float,
           alpha: float) -> dict[str, str]:
    """Per rollout: ``regressed``, ``healthy`` or ``unknown`` from its outcomes."""
    tally: dict[str, dict[str, list[float]]] = {}
    for _seq, event in events:
        if isinstance(event, Outcome):
            per = tally.setdefault(event.rollout, {})
            n_q_sum_loss = per.setdefault(event.variant, [0.0, 0.0, 0.0, 0.0])
            n_q_sum_loss[0] += 1
            if event.quality is not None:
                n_q_sum_loss[1] += 1
                n_q_sum_loss[2] += event.quality
            n_q_sum_loss[3] += event.verdict == "loss"
    truth = {}
    for rollout, per in tally.items():
        base, cand = per.get("baseline"), per.get("candidate")
        if not base or not cand or cand[0] < MIN_OUTCOMES or base[0] < MIN_OUTCOMES:
            truth[rollout] = "unknown"
            continue
        regressed = False
        if cand[1] >= MIN_OUTCOMES and base[1] >= MIN_OUTCOMES:
            regressed = base[2] / base[1] - cand[2] / cand[1] > quality_drop
        p_b, p_c = base[3] / base[0], cand[3] / cand[0]
        pooled = (base[3] + cand[3]) / (base[0] + cand[0])
        se = math.sqrt(pooled * (1 - pooled) * (1 / base[0] + 1 / cand[0]))
        if se > 0 and p_c - p_b > loss_margin and norm.sf((p_c - p_b) / se) < alpha:
            regressed = True
        truth[rollout] = "regressed" if regressed else "healthy"
    return truth


def decode_messages(messages: Iterable[tuple[int, str, bytes]]) -> list[tuple[int, AnyEvent]]:
    """Good events with their stream sequences, in log order."""
    out: list[tuple[int, AnyEvent]] = []
    for seq, subject, data in messages:
        out.extend((seq, event) for event in decode_from_log(subject, data)[0])
    return out


def backtest(messages: Iterable[tuple[int, str, bytes]], candidate: Policy, *, candidate_name: str = "candidate",
             quality_drop: float = 5.0, loss_margin: float = 0.05, alpha: float = 0.05) -> BacktestReport:
    """Compare the live policy (recorded and replayed) with ``candidate`` over the log."""
    events = decode_messages(messages)
    recorded = recorded_kills(events)
    live = run_policy(events, "live")
    cand = run_policy(events, candidate_name, candidate)
    truth = _truth(events, quality_drop, loss_margin, alpha)
    names = sorted({e.rollout for _s, e in events if not e.rollout.startswith("_")})
    rows = []
    totals = {"rollouts": len(names), "live_kills": 0, "candidate_kills": 0, "same_moment": 0,
              "live_false_kills": 0, "live_missed_regressions": 0,
              "candidate_false_kills": 0, "candidate_missed_regressions": 0, "replay_mismatches": 0}
    for name in names:
        rec, rep, cnd = recorded.get(name, []), live.kills.get(name, []), cand.kills.get(name, [])
        label = truth.get(name, "unknown")
        row = {
            "rollout": name,
            "recorded_kill_ms": rec[0] if rec else None,
            "live_kill_ms": rep[0] if rep else None,
            "candidate_kill_ms": cnd[0] if cnd else None,
            "delta_ms": (cnd[0] - rep[0]) if cnd and rep else None,
            "replay_matches_recording": rec[:1] == rep[:1],
            "truth": label,
            "candidate_reason": cand.reasons.get(name, [""])[0],
        }
        for who, kills in (("live", rep), ("candidate", cnd)):
            row[f"{who}_false_kill"] = bool(kills) and label == "healthy"
            row[f"{who}_missed_regression"] = not kills and label == "regressed"
            totals[f"{who}_kills"] += bool(kills)
            totals[f"{who}_false_kills"] += row[f"{who}_false_kill"]
            totals[f"{who}_missed_regressions"] += row[f"{who}_missed_regression"]
        totals["same_moment"] += bool(rep) and rep[:1] == cnd[:1]
        totals["replay_mismatches"] += not row["replay_matches_recording"]
        rows.append(row)
    return BacktestReport(candidate_name, rows, totals)


async def evaluate_rollout(js: Any, rollout: str, body: dict[str, Any], *, msg_ids: Any = None) -> dict[str, Any]:
    """The API's ``evaluate``: fold the rollout's log now; publish a kill the log lacks."""
    from rollout_engine.engine.api.control_log import read_control, read_messages, rollout_subjects
    from rollout_engine.events import encode, subjects

    events: list[tuple[int, AnyEvent]] = []
    first = 0
    async with contextlib.aclosing(read_messages(js, rollout_subjects(rollout), batch=1)) as head:
        async for msg in head:
            first = msg.seq  # ticks before the rollout's first message cannot change its state
            break
    if first:
        async for msg in read_messages(js, [*rollout_subjects(rollout), subjects.TICK], start_seq=first):
            events.extend((msg.seq, e) for e in msg.events())
    projection = RollbackProjection()
    seen = {e.id for _s, e in events if isinstance(e, _COMMANDS)}
    missing: list[KillSwitch] = []
    for seq, event in events:
        for command in projection.apply(event, seq):
            if isinstance(command, KillSwitch) and command.id not in seen:
                missing.append(command)
            projection.apply(command, seq)
    status = projection.status(rollout)
    killed_now = False
    if missing and body.get("act", True) and not (await read_control(js, rollout)).state.kill_switch:
        kill = missing[-1]
        if msg_ids is None:
            from rollout_engine.engine.stack.msg_ids import EngineIds

            msg_ids = EngineIds.ephemeral()
        await js.publish(subjects.control(rollout, "kill_switch"), encode(kill), headers=msg_ids.headers(kill.id))
        killed_now = True
    return {
        "rollout": rollout,
        "would_kill": bool(missing) or bool(status.get("kill_switch")),
        "killed_now": killed_now,
        "reasons": [k.reason for k in missing],
        "evaluation": status,
        "events": len(events),
    }


__all__ += ["decode_messages", "load_policy", "recorded_kills", "run_policy"]
