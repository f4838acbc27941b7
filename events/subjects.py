"""The one subject map. Nothing else formats or parses a NATS subject by hand.

::

    ro.evt.<rollout>.<kind>     producer events: decision | outcome | metric
    ro.ctl.<rollout>.<command>  control commands: kill_switch | resume | config,
                                and engine outputs: escalation | recheck | would_kill
    ro.tick                     engine ticks (time as an event)
    ro.stats.<rollout>          canary-stats snapshots (core NATS, for people/dashboards)
    ro.dlq.<consumer>           dead letters of one consumer
    ro.api.<endpoint>           the operator API (nats.micro)

Events, control and ticks are captured by ONE stream (``LOG_STREAM``) so every decider
reads a single total order and a replay is deterministic.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from events.ids import check_token

__all__ = [
    "CONTROL_ALL",
    "CONTROL_COMMANDS",
    "DLQ_ALL",
    "DLQ_STREAM",
    "EVENTS_ALL",
    "LOG_STREAM",
    "LOG_SUBJECTS",
    "PRODUCER_KINDS",
    "ROOT",
    "STATE_BUCKET",
    "TICK",
    "ParsedSubject",
    "control",
    "control_filter",
    "dlq",
    "event",
    "events_filter",
    "parse",
    "stats",
]

ROOT = "ro"
EVENTS_ALL = f"{ROOT}.evt.>"
CONTROL_ALL = f"{ROOT}.ctl.>"
TICK = f"{ROOT}.tick"
STATS_ALL = f"{ROOT}.stats.>"
DLQ_ALL = f"{ROOT}.dlq.>"
API_ALL = f"{ROOT}.api.>"

LOG_STREAM = "RO_LOG"
"""The log: producer events, control commands and ticks in one total order."""
LOG_SUBJECTS = [EVENTS_ALL, CONTROL_ALL, TICK]
DLQ_STREAM = "RO_DLQ"
STATE_BUCKET = "ro_state"
"""KV bucket: key ``<rollout>`` -> current ControlState (msgpack), for readers of any language."""

ProducerKind = Literal["decision", "outcome", "metric"]
PRODUCER_KINDS: tuple[str, ...] = ("decision", "outcome", "metric")
CONTROL_COMMANDS: tuple[str, ...] = (
    "kill_switch",
    "resume",
    "config",
    "escalation",
    "recheck",
    "would_kill",
    "guardrail",
    "bandit_config",
    "recheck_closed",
)


class ParsedSubject(NamedTuple):
    """What a subject names: its family (evt, ctl, tick...), rollout and kind."""

    family: str
    rollout: str | None
    kind: str | None


def event(rollout: str, kind: str) -> str:
    """``ro.evt.<rollout>.<kind>`` for a producer event."""
    check_token(rollout, "rollout")
    if kind not in PRODUCER_KINDS:
        raise ValueError(f"unknown producer event kind {kind!r}; expected one of {PRODUCER_KINDS}")
    return f"{ROOT}.evt.{rollout}.{kind}"


def control(rollout: str, command: str) -> str:
    """``ro.ctl.<rollout>.<command>`` for a control command or engine output."""
    check_token(rollout, "rollout")
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {CONTROL_COMMANDS}")
    return f"{ROOT}.ctl.{rollout}.{command}"


def events_filter(rollout: str | None = None) -> str:
    """Filter for every producer event, or those of one rollout."""
    return EVENTS_ALL if rollout is None else f"{ROOT}.evt.{check_token(rollout, 'rollout')}.*"


def control_filter(rollout: str | None = None) -> str:
    """Filter for every control subject, or those of one rollout."""
    return CONTROL_ALL if rollout is None else f"{ROOT}.ctl.{check_token(rollout, 'rollout')}.*"


def stats(rollout: str) -> str:
    """``ro.stats.<rollout>``: canary-stats snapshots."""
    return f"{ROOT}.stats.{check_token(rollout, 'rollout')}"


def dlq(consumer: str) -> str:
    """``ro.dlq.<consumer>``: dead letters of one consumer."""
    return f"{ROOT}.dlq.{check_token(consumer, 'consumer')}"


def api(endpoint: str) -> str:
    """``ro.api.<endpoint>``: one operator API endpoint."""
    return f"{ROOT}.api.{check_token(endpoint, 'endpoint')}"


def parse(subject: str) -> ParsedSubject:
    """Split a subject of this map into its parts; raise ValueError for a foreign one."""
    parts = subject.split(".")
    if len(parts) >= 2 and parts[0] == ROOT:
        family = parts[1]
        if family in ("evt", "ctl") and len(parts) == 4:
            return ParsedSubject(family, parts[2], parts[3])
        if family in ("stats", "dlq") and len(parts) == 3:
            return ParsedSubject(family, parts[2], None)
        if family == "tick" and len(parts) == 2:
            return ParsedSubject(family, None, None)
    raise ValueError(f"{subject!r} is not a rollout-engine subject (see events.subjects)")
