"""The one fold: log messages into projections, in order, once.

Every path that folds the log runs this module: the live runtime
(``consumers.runtime``), ``rollout replay``, backtests and the API's on-demand
evaluation (``engine.logtools``), the policy simulator (its events were never a message:
it runs :func:`fold_events`, the part after reading), and the benchmarks. "Replay proves
the live fold" is true because both run :func:`fold_message`.

- :func:`read_message` is the one place where a message's subject and its decoded
  events meet: what a message may carry is decided here, for every reader of the log;
- :func:`fold_message` applies a message's events to one or more projections
  (:func:`fold_events`); a bad item or a fold that raises becomes a :class:`Failure`
  (the runtime dead-letters it) and the fold goes on. Given a seen set
  (``consumers.dedupe.SeenIds``, the :class:`Folder`'s, a replay's, a backtest's), it
  folds a producer event id of a rollout once within the duplicate window and counts the
  copies (``Folded.duplicates``): they are not failures, nothing is dead-lettered;
- :class:`Folder` adds the rules that make a consumer exactly-once, with no I/O, so they
  are tested in microseconds: messages are folded in stream-sequence order, starting
  right after the committed position; a sequence at or below it (a redelivery) is
  skipped; the position advances only over a contiguous prefix, so a message after a
  gap is *held* and handed back, never folded early (PITFALLS: redelivery can arrive
  out of order), until the runtime fills the gap or declares it deleted (:meth:`Folder.skip_to`).

A batch's result (new position, changed snapshot parts, emitted events, dead letters) is
what the runtime commits in one SQLite transaction before it acks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rollout_engine.consumers.deadletter import DeadLetter, dead_letter_row
from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.consumers.outbox import OutboxRow, event_row
from rollout_engine.consumers.projection import Projection
from rollout_engine.consumers.resident import Resident
from rollout_engine.events import AnyEvent, Event, LogMessage, decode_from_log, encode, subjects

__all__ = ["BatchResult", "Failure", "Folded", "Folder", "events_of", "fold_events", "fold_message", "read_fresh",
           "read_message"]

log = logging.getLogger(__name__)

_PRODUCED = f"{subjects.ROOT}.evt."
"""Subjects of producer events, the only ones de-duplicated by event id (``consumers.dedupe``)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An item of a message that could not be folded: where, which field, why, its bytes.

    ``index`` is the item of a batch (-1: the whole message; -2: a decoded event whose
    fold raised, ``field`` then is ``"projection"``).
    """

    index: int
    field: str
    reason: str
    data: bytes


@dataclass(slots=True)
class Folded:
    """One message folded into one projection: events folded, events emitted, failures.

    ``failed`` starts with the ``rejected`` items that did not decode (the same for every
    projection), then the events whose fold raised. ``duplicates``: events not folded
    because their id was already seen (not counted in ``events``).
    """

    events: int
    emitted: list[Event]
    failed: list[Failure]
    rejected: int = 0
    duplicates: int = 0

    @property
    def errors(self) -> int:
        """Events whose fold raised."""
        return len(self.failed) - self.rejected


def read_message(message: LogMessage) -> tuple[list[AnyEvent], list[Failure]]:
    """The good events of a log message, and a :class:`Failure` for each bad item."""
    events, rejected = decode_from_log(message.subject, message.data)
    return events, [Failure(r.index, r.error.field, r.reason, r.data) for r in rejected]


def read_fresh(message: LogMessage, seen: SeenIds | None) -> tuple[list[AnyEvent], list[Failure], int]:
    """:func:`read_message`, less the producer events ``seen`` already had: (events, failures, duplicates)."""
    events, rejected = read_message(message)
    if seen is None or not events or not message.subject.startswith(_PRODUCED):
        return events, rejected, 0
    fresh = seen.fresh(events, message.time_ms)
    return fresh, rejected, len(events) - len(fresh)


def fold_message(message: LogMessage, projections: Sequence[Projection], seen: SeenIds | None = None,
                 timings: dict[str, float] | None = None) -> list[Folded]:
    """Fold one message into each projection (decoded once); one :class:`Folded` each.

    Items that do not decode are failures of every projection; an event whose ``apply``
    raises is a failure of that projection only (a reducer bug must not stop the engine).
    With ``seen``, producer events whose id the rollout already had within the window
    (by the message's store time) are dropped before any projection sees them. With
    ``timings``, the seconds each projection's fold took are added to ``timings[name]``
    (a parallel replay plans with them; they never reach a state).
    """
    events, rejected, duplicates = read_fresh(message, seen)
    produced = message.subject.startswith(_PRODUCED)
    out = []
    for projection in projections:
        if produced and not getattr(projection, "reads_events", True):
            # A fold of the engine's messages only (control, notifier) ignores every producer
            # event, and a producer subject carries nothing else (events.origin): no call at all.
            out.append(Folded(len(events), [], list(rejected), len(rejected), duplicates))
            continue
        if timings is None:
            emitted, raised = fold_events(projection, events, message.seq)
        else:
            started = time.perf_counter()
            emitted, raised = fold_events(projection, events, message.seq)
            timings[projection.name] = timings.get(projection.name, 0.0) + time.perf_counter() - started
        out.append(Folded(len(events), emitted, [*rejected, *raised], len(rejected), duplicates))
    return out


def fold_events(projection: Projection, events: Iterable[AnyEvent], seq: int) -> tuple[list[Event], list[Failure]]:
    """Apply events already read from the log at ``seq`` to one projection: what it emits,
    and a :class:`Failure` for each event whose fold raised (logged; the fold goes on).

    :func:`fold_message` runs this after :func:`read_message`; the policy simulator
    (``engine.logtools.simulate``), whose events never were a message, runs it directly
    (no de-duplication: its events are generated, each id once).
    """
    apply = projection.apply
    emitted: list[Event] = []
    failed: list[Failure] = []
    for event in events:
        try:
            result = apply(event, seq)
        except Exception as exc:
            log.exception("%s: fold of seq %d failed", projection.name, seq)
            failed.append(Failure(-2, "projection", f"{type(exc).__name__}: {exc}", encode(event)))
            continue
        if result:
            emitted.extend(result)
    return emitted, failed


@dataclass(slots=True)
class BatchResult:
    """What folding one batch produced: everything the runtime commits together."""

    seq: int
    events: int = 0
    messages: int = 0
    skipped: int = 0
    duplicates: int = 0
    """Producer events not folded: their id was seen within the window (``consumers.dedupe``)."""
    held: list[LogMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    emitted: list[Event] = field(default_factory=list)
    parts: dict[str, bytes] = field(default_factory=dict)

    def merge(self, part: BatchResult) -> None:
        """Add a later batch's result to this one (the runtime folds a gap's filling)."""
        self.seq = part.seq
        self.events += part.events
        self.messages += part.messages
        self.skipped += part.skipped
        self.duplicates += part.duplicates
        self.dead.extend(part.dead)
        self.emitted.extend(part.emitted)
        self.parts.update(part.parts)
        self.held = part.held


class Folder:
    """Fold batches of log messages into ``projection``, tracking the committed position.

    ``seen`` is the consumer's set of producer event ids (``consumers.dedupe``; default: a
    fresh one with the default window and cap); the runtime restores it with the position
    and commits what each batch adds to it in the same transaction. A projection that
    folds no producer event (``reads_events = False``: control, notifier) gets none, so
    its process spends neither memory nor time on ids it would ignore. With ``resident``
    (``consumers.resident``), the resting rollouts a batch names are loaded before it is folded.
    """

    def __init__(self, projection: Projection, seq: int = 0, consumer: str | None = None,
                 contiguous: bool = True, seen: SeenIds | None = None, resident: Resident | None = None) -> None:
        self.projection = projection
        self.resident = resident  # resting rollouts (consumers.resident): loaded before a batch is folded
        self.seen: SeenIds | None = None
        if getattr(projection, "reads_events", True):
            self.seen = SeenIds(journal=True) if seen is None else seen  # the runtime commits its writes
        self.consumer = consumer or projection.name
        self.seq = seq
        self.events = 0
        # A partition's consumer reads a filtered log: its stream sequences have holes
        # by design, so order is checked on the consumer's delivery sequence instead
        # (the runtime rewinds on a hole there) and the folder only skips what is committed.
        self.contiguous = contiguous

    def skip_to(self, seq: int) -> None:
        """Declare sequences up to ``seq`` gone from the stream (deleted or aged out)."""
        if seq > self.seq:
            log.warning("%s: stream sequences %d..%d are gone from the log; skipping them", self.consumer, self.seq + 1, seq)
            self.seq = seq

    def fold_batch(self, messages: Iterable[LogMessage], *, parts: bool = True) -> BatchResult:
        """Fold what is next in order; return the result to commit (and what was held).
        ``parts=False`` leaves the changed parts to encode to the caller (one encoding for
        several slices of a batch: ``consumers/early.py``)."""
        ordered = sorted(messages, key=lambda m: m.seq)
        if self.resident is not None:
            self.resident.prepare(ordered)
        result = BatchResult(self.seq)
        projections = [self.projection]
        for index, message in enumerate(ordered):
            seq = message.seq
            if seq <= self.seq:
                result.skipped += 1
                continue
            if self.contiguous and seq != self.seq + 1:
                result.held = [m for m in ordered[index:] if m.seq > self.seq]
                break
            folded = fold_message(message, projections, self.seen)[0]
            result.messages += 1
            result.events += folded.events
            result.duplicates += folded.duplicates
            result.emitted.extend(folded.emitted)
            result.dead.extend(self._dead(message, f) for f in folded.failed)
            self.events += folded.events
            self.seq = seq
        result.seq = self.seq
        result.parts = self.projection.changed_parts() if result.messages and parts else {}
        return result

    def _dead(self, message: LogMessage, failure: Failure) -> DeadLetter:
        return DeadLetter(consumer=self.consumer, seq=message.seq, subject=message.subject, index=failure.index,
                          field=failure.field, reason=failure.reason, data=failure.data)

    @staticmethod
    def outbox_of(result: BatchResult) -> list[OutboxRow]:
        """Outbox rows of a batch: emitted events, then dead letters."""
        return [*(event_row(e) for e in result.emitted), *(dead_letter_row(d) for d in result.dead)]


def events_of(message: LogMessage, seen: SeenIds | None = None) -> list[AnyEvent]:
    """The good events of a log message, as every consumer folds them (reports, tools); with
    ``seen``, less the copies of producer events already seen (``consumers.dedupe``)."""
    return read_fresh(message, seen)[0]
