"""The one record of a log message, as every reader of the log sees it.

The live runtime, ``rollout replay``, backtests, exports and the API's on-demand
evaluation all hand the fold (``consumers.folding``) the same :class:`LogMessage`:
the stream sequence (projections receive it), the subject (the only part of a message
the server vouches for: it says who may have published it), the payload bytes as
stored, and the time JetStream stored it (0 when unknown).

:func:`log_messages` goes the other way for tools and tests that write a prepared log:
events in, ``(subject, payload)`` messages out, each kind on its own subject.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from rollout_engine.events import subjects
from rollout_engine.events.codec import encode_batch
from rollout_engine.events.schema import Event

__all__ = ["LogMessage", "log_messages"]


@dataclass(frozen=True, slots=True)
class LogMessage:
    """One message of ``RO_LOG``: stream sequence, subject, payload, store time (ms) and
    headers (the engine's signature of a control command: ``Ro-Sig-Key``, ``Ro-Sig``;
    None when the reader did not keep them)."""

    seq: int
    subject: str
    data: bytes
    time_ms: int = 0
    headers: dict[str, str] | None = None


def log_messages(events: Iterable[Event], batch: int = 100) -> list[tuple[str, bytes]]:
    """``(subject, payload)`` messages for ``events`` in order: consecutive events of one rollout
    and kind share a batch of at most ``batch`` on their own subject (the subject is checked).

    For tools and tests that write a prepared log; services use the SDK's publisher.
    """
    out: list[tuple[str, bytes]] = []
    for subject, group in itertools.groupby(events, key=subjects.for_event):
        items = list(group)
        out.extend((subject, encode_batch(items[i:i + batch])) for i in range(0, len(items), batch))
    return out
