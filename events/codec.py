"""Bytes on the wire <-> events, for one event or a batch, in msgpack and JSON.

Framing: a message's payload is either one event (a msgpack map) or a batch (a msgpack
array of maps, at most ``MAX_BATCH`` long, all of one rollout and kind by convention).
Consumers accept both: the first byte says which.

Decoding never lets one bad event poison a good batch: the fast path decodes the whole
batch in one call; if that fails, :func:`decode_lenient` decodes item by item and hands
back the good events plus one :class:`Rejected` per bad item, each with its reason, so
the consumer dead-letters only what is bad. An unknown ``kind`` (a newer producer) is
rejected the same way instead of wedging an older consumer (msgspec #691).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from rollout_engine.events.checks import batch_ok, check_ids, check_values
from rollout_engine.events.errors import EventError
from rollout_engine.events.origin import rule_of
from rollout_engine.events.schema import (
    KINDS,
    SCHEMA_VERSION,
    AnyEvent,
    Event,
)

__all__ = [
    "MAX_BATCH",
    "MAX_MESSAGE_BYTES",
    "Rejected",
    "decode",
    "decode_from_log",
    "decode_json",
    "decode_lenient",
    "decode_message",
    "encode",
    "encode_batch",
    "encode_json",
    "iter_json_lines",
    "validate",
]

MAX_BATCH = 1000
"""Most events one message may carry."""

MAX_MESSAGE_BYTES = 1024 * 1024
"""Largest payload the engine accepts (1 MiB); larger ones are dead-lettered."""

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_one = msgspec.msgpack.Decoder(AnyEvent)
_many = msgspec.msgpack.Decoder(list[AnyEvent])
_one_json = msgspec.json.Decoder(AnyEvent)
_raw_items = msgspec.msgpack.Decoder(list[msgspec.Raw])


class _Envelope(msgspec.Struct):
    """Just enough of an event to say why the full decode failed."""

    kind: str = ""
    v: int = SCHEMA_VERSION


_envelope = msgspec.msgpack.Decoder(_Envelope)
_envelope_json = msgspec.json.Decoder(_Envelope)


def validate(event: AnyEvent) -> AnyEvent:
    """Check a freshly built event against the whole contract (constructors do not).

    The SDK calls this before anything is buffered, so the producer's caller gets the
    error, naming the field and the rule.
    """
    try:
        checked = msgspec.convert(msgspec.to_builtins(event), type(event))
    except msgspec.ValidationError as exc:
        raise EventError.from_msgspec(exc) from None
    check_ids(checked)
    check_values(checked)
    return checked


@dataclass(frozen=True, slots=True)
class Rejected:
    """One item of a message that could not be decoded, and why.

    ``index`` is the item's place in its batch, or -1 when the whole message is at fault.
    """

    index: int
    error: EventError
    data: bytes

    @property
    def reason(self) -> str:
        where = f"item {self.index}: " if self.index >= 0 else ""
        return f"{where}{self.error}"


def encode(event: Event) -> bytes:
    """One event as msgpack."""
    return _encoder.encode(event)


def encode_batch(events: Sequence[Event]) -> bytes:
    """Several events as one msgpack array (one JetStream message)."""
    if len(events) > MAX_BATCH:
        raise EventError("batch", f"at most {MAX_BATCH} events per message, got {len(events)}")
    return _encoder.encode(events)


def encode_json(event: Event) -> bytes:
    """One event as JSON, for export and people."""
    return _json_encoder.encode(event)


def _is_array(data: bytes) -> bool:
    first = data[0]
    return 0x90 <= first <= 0x9F or first in (0xDC, 0xDD)


def _check_size(data: bytes | memoryview) -> None:
    if len(data) == 0:
        raise EventError("payload", "empty message")
    if len(data) > MAX_MESSAGE_BYTES:
        raise EventError(
            "payload",
            f"{len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit",
            "split the batch into smaller messages",
        )


_JSON_STARTS = frozenset(b"{[ \t\r\n")


def _json_instead_of_msgpack(data: bytes | memoryview) -> EventError | None:
    """A payload that starts like JSON: every msgpack event is a map or an array of maps,
    and neither starts with these bytes (they would be small positive integers)."""
    if data[0] in _JSON_STARTS:
        return EventError("payload", "JSON, expected msgpack",
                          "producers publish msgpack (rollout_engine.events.encode / encode_batch); "
                          "JSON is for export files and people")
    return None


def _too_deep() -> EventError:
    return EventError("payload", "nested too deeply to decode (a hostile or corrupt message)",
                      "send flat events: an event is a map of scalars, a batch an array of them")


def _explain(data: bytes, exc: Exception, envelope: msgspec.msgpack.Decoder | msgspec.json.Decoder) -> EventError:
    """Turn a failed decode into the most useful error: unknown kind, version, or field."""
    try:
        env = envelope.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return EventError.from_msgspec(exc)
    if env.kind not in KINDS:
        return EventError(
            "$.kind",
            f"unknown event kind {env.kind!r}; this engine knows {sorted(KINDS)}",
            "a newer producer? upgrade the consumer",
        )
    if env.v != SCHEMA_VERSION and isinstance(env.v, int) and env.v > SCHEMA_VERSION:
        return EventError(
            "$.v",
            f"schema version {env.v} is newer than {SCHEMA_VERSION}, the newest this engine reads",
            "upgrade the consumer",
        )
    return EventError.from_msgspec(exc)


def decode(data: bytes) -> AnyEvent:
    """Decode one msgpack event; raise :class:`EventError` naming the field and rule."""
    _check_size(data)
    try:
        event = _one.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _explain(data, exc, _envelope) from None
    except RecursionError:  # 200 kB of nested arrays is under the size limit
        raise _too_deep() from None
    check_ids(event)
    check_values(event)
    return event


def decode_message(data: bytes) -> list[AnyEvent]:
    """Decode a message holding one event or a batch; all-or-nothing.

    Raises :class:`EventError` for the first problem found. Consumers that must salvage
    the good events of a partly bad batch use :func:`decode_lenient`.
    """
    events, rejected = decode_lenient(data)
    if rejected:
        raise rejected[0].error
    return events


def decode_lenient(data: bytes) -> tuple[list[AnyEvent], list[Rejected]]:
    """Decode what can be decoded; return the good events and the rejected items.

    The whole-message fast path costs one msgspec call; only a message with a fault
    falls back to item-by-item decoding. Never raises: a message nested too deeply
    for the decoder is one rejected item (a poison message must not crash a consumer).
    """
    try:
        return _decode_lenient(data)
    except RecursionError:
        return [], [Rejected(-1, _too_deep(), bytes(data))]


def _decode_lenient(data: bytes) -> tuple[list[AnyEvent], list[Rejected]]:
    try:
        _check_size(data)
    except EventError as exc:
        return [], [Rejected(-1, exc, bytes(data))]
    as_json = _json_instead_of_msgpack(data)
    if as_json is not None:
        return [], [Rejected(-1, as_json, bytes(data))]
    if not _is_array(data):
        try:
            return [decode(data)], []
        except EventError as exc:
            return [], [Rejected(-1, exc, bytes(data))]
    try:
        events = _many.decode(data)
        if len(events) <= MAX_BATCH and batch_ok(events):
            return events, []
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        items = _raw_items.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return [], [Rejected(-1, EventError.from_msgspec(exc), bytes(data))]
    if len(items) > MAX_BATCH:
        error = EventError("batch", f"at most {MAX_BATCH} events per message, got {len(items)}")
        return [], [Rejected(-1, error, bytes(data))]
    good: list[AnyEvent] = []
    bad: list[Rejected] = []
    for index, raw in enumerate(items):
        item = bytes(raw)
        try:
            good.append(decode(item))
        except EventError as exc:
            bad.append(Rejected(index, exc, item))
    return good, bad


def decode_from_log(subject: str, data: bytes) -> tuple[list[AnyEvent], list[Rejected]]:
    """:func:`decode_lenient` for a message of the log, checked against the subject it arrived on.

    Every reader of the log decodes through this (the fold, replay, export, backtest, the
    SDK's control follower), so a body whose kind or rollout differs from its subject is
    rejected with a reason naming the mismatch (``rollout_engine.events.origin``), and a
    subject that does not parse rejects its whole message. Never raises.
    """
    rule = rule_of(subject)
    if not isinstance(rule, EventError):
        events, rejected = decode_lenient(data)
        if rule.all_ok(events):  # the common case: a check at C speed, nothing to rebuild
            return events, rejected
        check = rule.check
    else:
        return [], [Rejected(-1, rule, bytes(data))]
    taken = {r.index for r in rejected}
    places = (i for i in itertools.count() if i not in taken)
    good: list[AnyEvent] = []
    bad = list(rejected)
    single = not _is_array(data)
    for event in events:
        place = -1 if single else next(places)
        error = check(event)
        if error is None:
            good.append(event)
        else:
            bad.append(Rejected(place, error, _encoder.encode(event)))
    bad.sort(key=lambda r: r.index)
    return good, bad


def decode_json(data: bytes | str) -> AnyEvent:
    """Decode one JSON event (export files, people, other languages)."""
    raw = data.encode() if isinstance(data, str) else data
    _check_size(raw)
    try:
        event = _one_json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _explain(raw, exc, _envelope_json) from None
    except RecursionError:
        raise _too_deep() from None
    check_ids(event)
    check_values(event)
    return event


def iter_json_lines(lines: Iterable[bytes]) -> Iterable[AnyEvent]:
    """Decode a JSON-lines export, skipping blank lines."""
    for line in lines:
        if line.strip():
            yield decode_json(line)
