"""The pure half of the runtime: fold log messages into a projection, in order, once.

:class:`Folder` owns the rules that make a consumer exactly-once, with no I/O, so they
are tested in microseconds and shared by the live runtime, ``rollout replay`` and tests:

- messages are folded in stream-sequence order, starting right after the committed
  position; a sequence at or below it (a redelivery) is skipped;
- the position advances only over a contiguous prefix: a message after a gap is
  *held* and handed back, never folded early (PITFALLS: redelivery can arrive out
  of order), until the runtime fills the gap or declares it deleted (:meth:`skip_to`);
- a message that does not decode, or whose fold raises, becomes a dead letter with
  its original bytes, sequence and reason; the fold goes on.

A batch's result (new position, changed snapshot parts, outbox rows) is what the
runtime commits in one SQLite transaction before it acks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rollout_engine.consumers.deadletter import DeadLetter, dead_letter_row
from rollout_engine.consumers.projection import Projection, digest_of
from rollout_engine.consumers.store import OutboxRow
from rollout_engine.events import AnyEvent, Event, decode_from_log, encode, kind_of, subjects

__all__ = ["BatchResult", "Delivery", "Folder", "fold", "snapshot_parts", "subject_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message of the log: stream sequence, subject, payload."""

    seq: int
    subject: str
    data: bytes


@dataclass(slots=True)
class BatchResult:
    """What folding one batch produced: everything the runtime commits together."""

    seq: int
    events: int = 0
    messages: int = 0
    skipped: int = 0
    held: list[Delivery] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    parts: dict[str, bytes] = field(default_factory=dict)


def subject_for(event: Event) -> str:
    """Where an emitted event is published, from the one subject map."""
    kind = kind_of(event)
    if kind in subjects.CONTROL_COMMANDS:
        return subjects.control(event.rollout, kind)
    if kind in subjects.PRODUCER_KINDS:
        return subjects.event(event.rollout, kind)
    if kind == "tick":
        return subjects.TICK
    raise ValueError(
        f"a projection emitted a {kind!r} event, which has no subject in events.subjects; "
        "add one there (CONTROL_COMMANDS) before emitting it"
    )


def snapshot_parts(projection: Projection, changed_only: bool) -> dict[str, bytes]:
    """The projection's state as parts: incremental when it supports it, else one part."""
    if changed_only and hasattr(projection, "changed_parts"):
        return projection.changed_parts()  # type: ignore[no-any-return]
    if hasattr(projection, "all_parts"):
        return projection.all_parts()  # type: ignore[no-any-return]
    return {"": projection.snapshot()}


def restore_parts(projection: Projection, parts: dict[str, bytes]) -> None:
    """Inverse of :func:`snapshot_parts`."""
    if not parts:
        return
    if hasattr(projection, "restore_parts"):
        projection.restore_parts(parts)
    else:
        projection.restore(parts[""])


class Folder:
    """Fold batches of deliveries into ``projection``, tracking the committed position."""

    def __init__(self, projection: Projection, seq: int = 0, consumer: str | None = None,
                 contiguous: bool = True) -> None:
        self.projection = projection
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

    def fold_batch(self, deliveries: Iterable[Delivery]) -> BatchResult:
        """Fold what is next in order; return the result to commit (and what was held)."""
        ordered = sorted(deliveries, key=lambda d: d.seq)
        result = BatchResult(self.seq)
        for index, delivery in enumerate(ordered):
            seq = delivery.seq
            if seq <= self.seq:
                result.skipped += 1
                continue
            if self.contiguous and seq != self.seq + 1:
                result.held = [d for d in ordered[index:] if d.seq > self.seq]
                break
            self._fold_one(delivery, result)
            self.seq = seq
        result.seq = self.seq
        result.parts = snapshot_parts(self.projection, changed_only=True) if result.messages else {}
        return result

    def _fold_one(self, delivery: Delivery, result: BatchResult) -> None:
        result.messages += 1
        events, rejected = decode_from_log(delivery.subject, delivery.data)
        for bad in rejected:
            result.dead.append(self._dead(delivery, bad.index, bad.error.field, bad.reason, bad.data))
        apply = self.projection.apply
        for event in events:
            try:
                emitted = apply(event, delivery.seq)
            except Exception as exc:  # a reducer bug must not stop the engine: park the event
                log.exception("%s: fold of seq %d failed", self.consumer, delivery.seq)
                result.dead.append(self._dead(delivery, -2, "projection", f"{type(exc).__name__}: {exc}", encode(event)))
                continue
            if emitted:
                result.outbox.extend(OutboxRow(e.id, subject_for(e), encode(e)) for e in emitted)
        result.events += len(events)
        self.events += len(events)

    def _dead(self, delivery: Delivery, index: int, field_: str, reason: str, data: bytes) -> DeadLetter:
        return DeadLetter(consumer=self.consumer, seq=delivery.seq, subject=delivery.subject,
                          index=index, field=field_, reason=reason, data=data)

    @staticmethod
    def outbox_of(result: BatchResult) -> list[OutboxRow]:
        """Outbox rows of a batch: emitted events, then dead letters."""
        return [*result.outbox, *(dead_letter_row(d) for d in result.dead)]

    def digest(self) -> str:
        return digest_of(self.projection.snapshot())


def fold(projection: Projection, events: Iterable[AnyEvent], start_seq: int = 1) -> list[Event]:
    """Fold events one at a time (replay from a file, tests); return what was emitted."""
    out: list[Event] = []
    for seq, event in enumerate(events, start_seq):
        out.extend(projection.apply(event, seq))
    return out


def fold_deliveries(projection: Projection, deliveries: Iterable[Delivery]) -> tuple[Folder, BatchResult]:
    """Fold raw log messages (an export with sequences) exactly as the live runtime does."""
    folder = Folder(projection)
    return folder, folder.fold_batch(deliveries)


def describe(result: BatchResult) -> dict[str, Any]:
    """A batch result as plain data, for logs and ``--json`` output."""
    return {"seq": result.seq, "events": result.events, "messages": result.messages,
            "skipped": result.skipped, "held": len(result.held), "dead_letters": len(result.dead),
            "emitted": len(result.outbox)}
