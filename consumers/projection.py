"""What every projection is, so the runtime knows nothing about any one of them.

A projection is a pure fold over the ordered log: ``apply(event, seq)`` updates its
state and returns the events it emits (commands, re-check requests...), with no I/O and
no clock. The runtime commits the snapshot, the stream position and the emitted events
in one SQLite transaction (invariant 3), then publishes the emitted events with their
deterministic ids.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from rollout_engine.events import AnyEvent, Event

__all__ = ["Projection", "digest_of"]


@runtime_checkable
class Projection(Protocol):
    """A pure, deterministic fold of the log.

    Implementations must make ``snapshot()`` a canonical encoding (sorted keys, no
    floats that depend on iteration order), so two folds of the same log give
    byte-identical snapshots and equal digests.
    """

    name: str
    """Durable name: the JetStream consumer, the SQLite store, the registry key."""

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        """Fold one event found at stream sequence ``seq``; return what it emits."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot made by :meth:`snapshot`."""
        ...


def digest_of(snapshot: bytes) -> str:
    """Stable hash of a projection snapshot (hex), for comparing two runs over one log."""
    return hashlib.blake2b(snapshot, digest_size=16).hexdigest()
