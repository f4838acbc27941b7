"""The one record of a log message, as every reader of the log sees it.

The live runtime, ``rollout replay``, backtests, exports and the API's on-demand
evaluation all hand the fold (``consumers.folding``) the same :class:`LogMessage`:
the stream sequence (projections receive it), the subject (the only part of a message
the server vouches for: it says who may have published it), the payload bytes as
stored, and the time JetStream stored it (0 when unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LogMessage"]


@dataclass(frozen=True, slots=True)
class LogMessage:
    """One message of ``RO_LOG``: stream sequence, subject, payload and store time (ms)."""

    seq: int
    subject: str
    data: bytes
    time_ms: int = 0
