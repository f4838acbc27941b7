"""Backtest: run a candidate rollback policy over a recorded log; on-demand evaluation.

The rollback consumer is a pure fold, so a policy can be judged against any recorded
log offline. For each policy run (the live one, as the log configured it, and the
candidate from a TOML file) the log is folded through a fresh
:class:`~consumers.rollback.projection.RollbackProjection` by the live runtime's fold
(``consumers.folding.fold_message``) with the recorded automatic commands taken out, and
the run's own commands fed back in their place, as the live consumer's commands come
back through the log. Operators' commands stay.

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
rollout's log and its live status. It is read-only, as everything here: when the fold
decides a kill that is not in the log (the rollback consumer is down or behind), it
returns that kill, and the API publishes it through its one guarded publish.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js import JetStreamContext

from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.consumers.folding import events_of, fold_message, read_message
from rollout_engine.consumers.projection import Projection
from rollout_engine.consumers.rollback.policy import Policy, load_policy_file, policy_document
from rollout_engine.consumers.rollback.projection import ACTOR, RollbackProjection
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.events import (
    COMMAND_TYPES,
    AnyEvent,
    ConfigChange,
    ControlState,
    Event,
    KillSwitch,
    LogMessage,
    Outcome,
    encode,
    encode_batch,
    new_event_id,
    subjects,
    transitions,
)

__all__ = ["MIN_OUTCOMES", "BacktestReport", "PolicyRunResult", "backtest", "evaluate_rollout", "fold_back",
           "load_candidate", "recorded_kills", "run_policy"]

MIN_OUTCOMES = 30


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
    return isinstance(event, COMMAND_TYPES) and (event.actor == ACTOR or event.producer == ACTOR)  # type: ignore[attr-defined]


def fold_back(projection: Projection, message: LogMessage, seen: SeenIds | None = None) -> list[Event]:
    """Fold a message with the live fold, then what it emits, as the relay sends it back
    through the log (at the same sequence: nothing else comes in between here). ``seen``:
    the run's producer event ids (``consumers.dedupe``), as the live consumer's."""
    emitted: list[Event] = []
    pending = [message]
    while pending:
        current = pending.pop(0)
        for command in fold_message(current, [projection], seen)[0].emitted:
            emitted.append(command)
            pending.append(LogMessage(current.seq, subjects.for_event(command), encode(command), current.time_ms))
    return emitted


def recorded_kills(messages: Iterable[LogMessage]) -> dict[str, list[int]]:
    """Automatic kill moments as they were recorded in the log."""
    kills: dict[str, list[int]] = {}
    for message in messages:
        for event in events_of(message):
            if isinstance(event, KillSwitch) and _is_auto(event):
                kills.setdefault(event.rollout, []).append(event.time_ms)
    return kills


def _seed(projection: RollbackProjection, rollout: str, name: str, document: dict[str, Any], seq: int,
          time_ms: int) -> LogMessage:
    """The ConfigChange that puts the candidate policy in force for ``rollout``, as a log message."""
    state = projection.rollouts[rollout].control if rollout in projection.rollouts else ControlState()
    seed = transitions.config_command(state, policy=document, id=new_event_id(time_ms), rollout=rollout,
                                      time_ms=time_ms, producer="backtest", actor="backtest",
                                      reason=f"candidate policy {name}")
    return LogMessage(seq, subjects.for_event(seed), encode(seed))


def run_policy(messages: Iterable[LogMessage], name: str, policy: Policy | None = None) -> PolicyRunResult:
    """Fold the log with recorded automatic commands replaced by this run's own.

    ``policy`` None: the live policy as the log configured it. Otherwise the candidate
    replaces every policy in the log, from each rollout's first event on.
    """
    projection = RollbackProjection()
    seen = SeenIds()
    result = PolicyRunResult(name)
    document = policy_document(policy) if policy is not None else None
    seeded: set[str] = set()
    for message in messages:
        events, _bad = read_message(message)
        kept = [e for e in events if not _is_auto(e)]
        if document is not None:
            kept = [msgspec.structs.replace(e, policy=None) if isinstance(e, ConfigChange) and e.policy is not None
                    else e for e in kept]
            for event in kept:
                if event.rollout not in seeded and not event.rollout.startswith("_"):
                    seeded.add(event.rollout)
                    seed = _seed(projection, event.rollout, name, document, message.seq, event.time_ms)
                    result.commands.extend(fold_back(projection, seed))
        if kept != events:
            if not kept:
                continue
            message = LogMessage(message.seq, message.subject, encode_batch(kept), message.time_ms)
        for command in fold_back(projection, message, seen):
            result.commands.append(command)
            if isinstance(command, KillSwitch):
                result.kills.setdefault(command.rollout, []).append(command.time_ms)
                result.reasons.setdefault(command.rollout, []).append(command.reason)
    return result


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal (what ``scipy.stats.norm.sf`` gives, without its import)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _truth(events: list[AnyEvent], quality_drop: float, loss_margin: float, alpha: float) -> dict[str, str]:
    """Per rollout: ``regressed``, ``healthy`` or ``unknown`` from its outcomes."""
    tally: dict[str, dict[str, list[float]]] = {}
    for event in events:
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
        if se > 0 and p_c - p_b > loss_margin and _normal_sf((p_c - p_b) / se) < alpha:
            regressed = True
        truth[rollout] = "regressed" if regressed else "healthy"
    return truth


def backtest(messages: Iterable[LogMessage], candidate: Policy, *, candidate_name: str = "candidate",
             quality_drop: float = 5.0, loss_margin: float = 0.05, alpha: float = 0.05) -> BacktestReport:
    """Compare the live policy (recorded and replayed) with ``candidate`` over the log."""
    log = list(messages)
    seen = SeenIds()  # the truth counts each outcome once, as the folds do
    events = [event for message in log for event in events_of(message, seen)]
    recorded = recorded_kills(log)
    live = run_policy(log, "live")
    cand = run_policy(log, candidate_name, candidate)
    truth = _truth(events, quality_drop, loss_margin, alpha)
    names = sorted({e.rollout for e in events if not e.rollout.startswith("_")})
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


async def evaluate_rollout(js: JetStreamContext, rollout: str) -> tuple[dict[str, Any], KillSwitch | None]:
    """The API's ``evaluate``, read-only: fold the rollout's log now with the live policy.

    Returns the evaluation and the last kill the fold decided that the log lacks (None
    when the log has every kill): publishing it is the API's, through its guarded publish.
    """
    log: list[LogMessage] = []
    first = 0
    async with contextlib.aclosing(read_messages(js, subjects.rollout_filters(rollout), batch=1)) as head:
        async for msg in head:
            first = msg.seq  # ticks before the rollout's first message cannot change its state
            break
    if first:
        log = [m async for m in read_messages(js, [*subjects.rollout_filters(rollout), subjects.TICK], start_seq=first)]
    projection = RollbackProjection()
    counted = SeenIds()  # ``events`` as the fold counts them: each copy once
    events = [e for m in log for e in events_of(m, counted)]
    seen = {e.id for e in events if isinstance(e, COMMAND_TYPES)}
    ids = SeenIds()  # from the rollout's first message: no id of its own comes before it
    missing = [c for m in log for c in fold_back(projection, m, ids) if isinstance(c, KillSwitch) and c.id not in seen]
    status = projection.status(rollout)
    reasons = [k.reason for k in missing]
    if not missing and status.get("kill_switch"):  # killed already: say by whom and why, and what breaches now
        kill = next((e for e in reversed(events) if isinstance(e, KillSwitch)), None)
        if kill is not None:
            reasons.append(f"killed by {kill.actor}: {kill.reason}")
        breaching = sorted(g for g, v in status.get("guards", {}).items() if v.get("judged") == "breaching")
        if breaching:
            reasons.append("breaching now: " + ", ".join(breaching))
    reply = {
        "rollout": rollout,
        "would_kill": bool(missing) or bool(status.get("kill_switch")),
        "reasons": reasons,
        "evaluation": status,
        "events": len(events),
    }
    return reply, (missing[-1] if missing else None)
