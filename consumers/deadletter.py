"""Dead letters: what a consumer could not fold, with the original bytes and the reason.

A dead letter is published on ``ro.dlq.<consumer>`` (stream ``RO_DLQ``) as a small
msgpack envelope, :class:`DeadLetter`, with headers for people using the ``nats`` CLI:

==================  ==========================================================
``Nats-Msg-Id``     the engine's keyed id (``consumers/relay.py``) of
                    ``dlq-<consumer>-<stream seq>-<index>``: deterministic, so
                    a consumer that re-folds a batch after a crash does not
                    dead-letter the same item twice
``Ro-Reason``       the reason, one line (also in the envelope)
``Ro-Stream-Seq``   stream sequence of the original message in ``RO_LOG``
==================  ==========================================================

Envelope fields: ``consumer``, ``stream``, ``seq`` (stream sequence), ``subject`` (of the
original message), ``index`` (item of a batch, -1 for the whole message), ``field`` and
``reason`` (from :class:`events.EventError`), ``data`` (the original bytes of the item,
or of the whole message). Decode with :func:`decode_dead_letter`.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.outbox import OutboxRow
from rollout_engine.events import subjects

__all__ = ["DeadLetter", "dead_letter_row", "decode_dead_letter", "extra_headers"]


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    """One item a consumer could not fold."""

    consumer: str
    stream: str = subjects.LOG_STREAM
    seq: int
    subject: str
    index: int = -1
    field: str = "payload"
    reason: str
    data: bytes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DeadLetter)
_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(dict[str, str])


def decode_dead_letter(data: bytes) -> DeadLetter:
    """The envelope of a message read from ``RO_DLQ``."""
    return _decoder.decode(data)


def dead_letter_row(letter: DeadLetter) -> OutboxRow:
    """The outbox row that publishes ``letter`` once (deterministic message id)."""
    msg_id = f"dlq-{letter.consumer}-{letter.seq}-{letter.index}"
    one_line = " ".join(letter.reason.split())[:500]
    headers = {"Ro-Reason": one_line, "Ro-Stream-Seq": str(letter.seq)}
    return OutboxRow(msg_id, subjects.dlq(letter.consumer), _encoder.encode(letter), _headers_encoder.encode(headers))


def extra_headers(row: OutboxRow) -> dict[str, str]:
    """The headers an outbox row carries besides ``Nats-Msg-Id`` (a dead letter's reason and sequence)."""
    return _headers_decoder.decode(row.headers) if row.headers else {}
