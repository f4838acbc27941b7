"""Early publish: fold a fetched batch a slice at a time and send what each slice emits at once.

The runtime commits once per batch (up to ``consumer_batch`` = 256 messages, about
25,600 events under load). Published after that commit, a kill decided by the batch's
first message waited for the fold of the other 255 and for the SQLite write; here it
leaves when its slice is folded, and the event loop runs between slices (acks, other
publishes) instead of being held for the whole batch.

Still exactly once (docs/reliability.md, "Early publish"): the command's id is derived
from its cause and published under the engine's keyed ``Nats-Msg-Id``. A crash before
the commit leaves the position where it was, the next process refolds the same
messages, decides the same command with the same id, and JetStream drops the re-send
within the stream's duplicate window (``dedupe_window_s``, 300 s by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from rollout_engine.consumers.folding import BatchResult, Folder
from rollout_engine.consumers.outbox import OutboxRow, event_row
from rollout_engine.consumers.relay import OutboxRelay
from rollout_engine.events import LogMessage

__all__ = ["SLICE", "SLICE_BYTES", "fold_slices", "slices"]

SLICE = 16
"""Most messages folded between two looks at what the fold emitted: a kill decided
anywhere in a 256-message batch is published after at most 15 more messages' fold, not
after the whole batch and its commit (figures in bench/NOTES.md)."""

SLICE_BYTES = 16_384
"""Most payload bytes in a slice (at least one message): SDK batches carry up to 100
events (about 20 KB), so 16 such messages were 1,600 events, 10 ms of fold on a quiet
host and 30 ms with a CPU-bound neighbour per core, between a kill's decision and its
publication. By bytes a slice is one such message, or 16 single-event ones."""


def slices(messages: list[LogMessage]) -> Iterator[list[LogMessage]]:
    """``messages`` in order, cut after ``SLICE`` messages or ``SLICE_BYTES`` of payload."""
    start, size = 0, 0
    for index, message in enumerate(messages):
        size += len(message.data)
        if index + 1 - start >= SLICE or size >= SLICE_BYTES:
            yield messages[start:index + 1]
            start, size = index + 1, 0
    if start < len(messages):
        yield messages[start:]


async def fold_slices(folder: Folder, messages: list[LogMessage], total: BatchResult, relay: OutboxRelay,
                      js: Any) -> list[tuple[OutboxRow, Any]]:
    """Fold ``messages`` into ``total`` a slice at a time (:func:`slices`), publishing what each slice emits
    before folding the next; returns the sends for :meth:`OutboxRelay.settle_early`.

    A gap stops the slicing: the slice's held messages and every later one wait behind
    it in ``total.held``, in order, as a single ``fold_batch`` would have left them. The
    changed parts are encoded once, after the last slice (per slice they cost 4.8% of a
    busy consumer's time against 0.5%, measured with py-spy at 50,000 events/s).
    """
    early: list[tuple[OutboxRow, Any]] = []
    done = 0
    for part_messages in slices(messages):
        done += len(part_messages)
        part = folder.fold_batch(part_messages, parts=False)
        total.merge(part)
        if part.emitted:
            early += await relay.publish_early(js, [event_row(e) for e in part.emitted])
        if total.held:
            total.held = total.held + messages[done:]
            break
        if done < len(messages):
            await asyncio.sleep(0)  # let acks, the subscriber and other tasks run
    if total.messages:  # each changed part encoded once per batch, not once per slice
        total.parts.update(folder.projection.changed_parts())
    return early
