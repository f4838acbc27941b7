"""What a consumer publishes after its commit: outbox rows.

The fold's outputs (emitted events, dead letters) become rows here; the store commits
them in the same transaction as the state (``consumers.store``), and the runtime's
relay publishes each with ``Nats-Msg-Id`` = its id, then deletes it. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout_engine.events import Event, encode, subjects

__all__ = ["OutboxRow", "event_row"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message to publish after the commit: its dedupe id, subject and payload."""

    id: str
    subject: str
    data: bytes
    headers: bytes | None = None
    """Extra headers, msgpack-encoded ``dict[str, str]`` (dead letters carry their reason)."""
    attempts: int = 0
    """Publishes attempted so far under the current ``salt`` (counted before each publish)."""
    salt: int = 0
    """0, or the re-send number after the row's message id was found taken (see consumers/relay.py)."""


def event_row(event: Event) -> OutboxRow:
    """The row that publishes an emitted event once: its id, its subject from the subject map."""
    return OutboxRow(event.id, subjects.for_event(event), encode(event))
