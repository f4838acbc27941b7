"""The subject a message arrived on is authoritative: what each subject may carry.

NATS permissions are granted on subjects, so the subject is the only thing the server
vouches for. A producer may publish ``ro.evt.>``; if the fold trusted the ``kind`` in
the body, a producer could put a ``kill_switch``, ``resume``, ``config`` or ``tick`` on
``ro.evt.r1.metric`` and forge engine commands. So every reader of the log checks each
decoded event against its subject, and dead-letters what does not match:

- ``ro.evt.<rollout>.<kind>`` carries only producer events of that kind
  (``decision`` on ``.decision``...) whose ``rollout`` is ``<rollout>``;
- ``ro.ctl.<rollout>.<command>`` carries only that command, for ``<rollout>``;
- ``ro.tick`` carries only ticks, of the engine's reserved rollout ``_engine``.

A partitioned log's trailing partition token is allowed (``events.subjects.parse``). A
subject that does not parse (``ro.evt.r1.metric.x``, five tokens) rejects its whole
message. Pure functions, no I/O: the fold, replay, export, backtest and the SDK's control
follower all call :func:`origin_error`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from rollout_engine.events import subjects
from rollout_engine.events.errors import EventError
from rollout_engine.events.schema import (
    ENGINE_ROLLOUT,
    EVENT_TYPES,
    KINDS,
    PRODUCER_TYPES,
    AnyEvent,
    kind_of,
)

__all__ = ["SubjectRule", "origin_error", "rule_of"]

_PRODUCER_KINDS = frozenset(kind_of(t) for t in PRODUCER_TYPES)
_TYPE_OF = {kind_of(t): t for t in EVENT_TYPES}
"""Each kind's one event type: an event is of a kind exactly when it is of its type."""
_ROLLOUT = operator.attrgetter("rollout")


class SubjectRule:
    """What one subject may carry: a single kind, and the rollout every event must name.

    :meth:`check` judges one event and names the mismatch; :meth:`all_ok` judges a whole
    batch at C speed from the same two attributes (``types``, ``rollouts``), so a reader
    pays no Python call per event for a good batch.
    """

    __slots__ = ("kind", "rollout", "rollouts", "subject", "types")

    def __init__(self, subject: str, kind: str, rollout: str | None) -> None:
        self.subject = subject
        self.kind = kind
        self.rollout = rollout
        self.types = frozenset({_TYPE_OF[kind]})
        """The event types this subject may carry: the one type of ``kind``."""
        self.rollouts = None if rollout is None else frozenset({rollout})
        """The rollouts its events may name (None: any)."""

    def check(self, event: AnyEvent) -> EventError | None:
        """None when ``event`` may arrive on this subject, else the error naming the mismatch."""
        if type(event) not in self.types:
            kind = kind_of(event)
            return EventError(
                "$.kind",
                f"a {kind!r} event arrived on {self.subject}, which carries only {self.kind!r} events",
                "the subject decides what a message may carry; engine commands come only from the engine",
            )
        if self.rollouts is not None and event.rollout not in self.rollouts:
            return EventError(
                "$.rollout",
                f"an event of rollout {event.rollout!r} arrived on {self.subject}, the subject of rollout "
                f"{self.rollout!r}",
                "publish each rollout's events on its own subjects (rollout_engine.events.subjects.event)",
            )
        return None

    def all_ok(self, events: Sequence[AnyEvent]) -> bool:
        """True when :meth:`check` passes every event of ``events`` (empty included).

        One set of types and one of rollouts, built by C loops; False says only that
        :meth:`check` must be run per event to name the culprits.
        """
        if not set(map(type, events)) <= self.types:
            return False
        return self.rollouts is None or set(map(_ROLLOUT, events)) <= self.rollouts


def rule_of(subject: str) -> SubjectRule | EventError:
    """The rule of ``subject``, or the error to dead-letter its whole message with."""
    try:
        parsed = subjects.parse(subject)
    except ValueError:
        return EventError(
            "subject",
            f"{subject!r} is not a subject of the log (ro.evt.<rollout>.<kind>, ro.ctl.<rollout>.<command>, ro.tick)",
            "a subject with extra or missing tokens is never folded",
        )
    if parsed.family == "tick":
        return SubjectRule(subject, "tick", ENGINE_ROLLOUT)
    kind = parsed.kind or ""
    if parsed.family == "evt" and kind in _PRODUCER_KINDS:
        return SubjectRule(subject, kind, parsed.rollout)
    if parsed.family == "ctl" and kind in KINDS and kind not in _PRODUCER_KINDS and kind != "tick":
        return SubjectRule(subject, kind, parsed.rollout)
    return EventError("subject", f"{subject!r} names no event kind of the log ({kind!r})",
                      "see docs/events.md for the subject map")


def origin_error(subject: str, event: AnyEvent) -> EventError | None:
    """None when ``event`` may arrive on ``subject``; else why not (one event at a time)."""
    rule = rule_of(subject)
    return rule if isinstance(rule, EventError) else rule.check(event)
