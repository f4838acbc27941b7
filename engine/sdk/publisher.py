"""Batching publisher: events -> msgpack batches -> JetStream, or the outbox when NATS is away.

Why batches: one JetStream message per event tops out near 30,000 events/s from Python
(a round trip each, nats-py #390); 100-event messages reach well over a million. So
events are buffered per (rollout, kind), sealed into one ``encode_batch`` message when
the buffer holds ``batch_size`` events or its first event is ``linger_s`` old, and sent
with ``js.publish_async`` in windows whose acks are gathered together.

Guarantees:

* Exactly once into the log: each batch carries ``Nats-Msg-Id`` = first event id +
  count, so a retry (after a lost ack, from the outbox, after a restart) is stored once.
* Nothing dropped: a batch JetStream did not acknowledge in time, or any batch while
  the connection is down, goes to the SQLite outbox; while the outbox holds anything,
  new batches queue behind it, so events reach the log in the order they were recorded.
* Bounded memory: at most ``max_buffered`` events are held in memory. Beyond that,
  :meth:`add` raises :class:`BufferFull` and :meth:`add_wait` waits up to its timeout
  first. Never a silent drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from nats.js import JetStreamContext

from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.outbox import Batch, Outbox
from rollout_engine.events import MAX_BATCH, Event, encode_batch

__all__ = ["BatchPublisher", "BufferFull"]

log = logging.getLogger(__name__)

WINDOW = 64
"""Batches sent before their acks are awaited together."""


class BufferFull(RuntimeError):
    """The in-memory event buffer is full: publishing is behind (or the disk is)."""


class BatchPublisher:
    """Buffers events and ships them in batches; see the module docstring.

    ``jetstream`` returns the JetStream context when the connection is up, else None;
    the owner (``RolloutClient``) calls :meth:`kick` when the connection comes back.
    """

    def __init__(
        self,
        outbox: Outbox,
        jetstream: Callable[[], JetStreamContext | None],
        *,
        batch_size: int = 250,
        linger_s: float = 0.005,
        max_buffered: int = 100_000,
        ack_timeout_s: float = 2.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1-{MAX_BATCH}, got {batch_size}")
        if linger_s < 0 or linger_s > 1:
            raise ValueError(f"linger_s must be 0-1 seconds, got {linger_s}")
        if max_buffered < batch_size:
            raise ValueError(f"max_buffered ({max_buffered}) must be at least batch_size ({batch_size})")
        self.outbox = outbox
        self._jetstream = jetstream
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.max_buffered = max_buffered
        self.ack_timeout_s = ack_timeout_s
        self._open: dict[str, list[Event]] = {}
        self._sealed: deque[Batch] = deque()
        self.buffered = 0
        """Events in memory: open buffers, sealed batches and batches in flight."""
        self._to_outbox = 0
        self._timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._drain_wake = asyncio.Event()
        self._space = asyncio.Event()
        self._down = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._gauge = m.OUTBOX_DEPTH.labels(outbox.path.stem)
        self._gauge.set(outbox.depth)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="sdk-publisher"),
            asyncio.create_task(self._drain_loop(), name="sdk-outbox-drain"),
        ]
        if outbox.depth:
            self._drain_wake.set()

    # --- hot path -----------------------------------------------------------------------
    def add(self, event: Event, subject: str) -> None:
        """Buffer one event for ``subject`` (``subjects.event(rollout, kind)``); never blocks.

        Raises :class:`BufferFull` when ``max_buffered`` events are already in memory.
        """
        if self.buffered >= self.max_buffered:
            raise BufferFull(
                f"{self.buffered} events are buffered (max_buffered={self.max_buffered}) and "
                "JetStream/outbox are not keeping up; `await client.wait_room(n)` before a burst "
                "of assign() calls, slow down, or raise max_buffered"
            )
        if self._closing:
            raise RuntimeError("the rollout client is closed; events can no longer be recorded")
        items = self._open.get(subject)
        if items is None:
            items = self._open[subject] = []
        items.append(event)
        self.buffered += 1
        if len(items) >= self.batch_size:
            self._seal(subject, items)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._seal_all)

    async def add_wait(self, event: Event, subject: str, timeout: float) -> None:
        """Like :meth:`add`, but wait up to ``timeout`` seconds for space first."""
        await self.wait_room(1, timeout)
        self.add(event, subject)

    async def wait_room(self, events: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``events`` more events fit; True if they do."""
        events = min(events, self.max_buffered)
        deadline = time.monotonic() + timeout
        while self.buffered + events > self.max_buffered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), remaining)
        return True

    def _seal(self, subject: str, items: list[Event]) -> None:
        del self._open[subject]
        first = items[0]
        self._sealed.append(Batch(f"{first.id}-{len(items)}", subject, encode_batch(items), len(items)))
        self._idle.clear()
        self._wake.set()

    def _seal_all(self) -> None:
        self._timer = None
        for subject, items in list(self._open.items()):
            self._seal(subject, items)

    # --- sending ------------------------------------------------------------------------
    def kick(self) -> None:
        """The connection is back: resume draining the outbox now."""
        self._down.clear()
        self._drain_wake.set()
        self._wake.set()

    def connection_lost(self) -> None:
        """The connection dropped: stop waiting for acks that may never come."""
        self._down.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._sealed:
                window = [self._sealed.popleft() for _ in range(min(WINDOW, len(self._sealed)))]
                try:
                    await self._dispatch(window)
                except Exception:  # the disk failed too: keep the events in memory, retry
                    log.exception("rollout SDK: could not store %d batches in the outbox", len(window))
                    self._sealed.extendleft(reversed(window))
                    await asyncio.sleep(0.5)
                    continue
                self.buffered -= sum(b.events for b in window)
                self._space.set()
            self._idle.set()  # nothing sealed is waiting or in flight

    async def _dispatch(self, window: list[Batch]) -> None:
        js = self._jetstream()
        if js is None or self.outbox.depth or self._to_outbox:
            await self._to_outbox_put(window, "disconnected" if js is None else None)
            return
        acked = await self._publish(js, window)
        m.PUBLISHED.labels("direct").inc(sum(b.events for b in window[:acked]))
        if acked < len(window):
            await self._to_outbox_put(window[acked:], "no_ack")

    async def _to_outbox_put(self, batches: list[Batch], cause: str | None) -> None:
        events = sum(b.events for b in batches)
        self._to_outbox += events  # seen by _dispatch at once, so later batches queue behind
        try:
            if cause:
                m.PUBLISH_ERRORS.labels(cause).inc(len(batches))
            await self.outbox.put(batches)
        finally:
            self._to_outbox -= events
        self._gauge.set(self.outbox.depth)
        self._drain_wake.set()

    async def _publish(self, js: JetStreamContext, batches: list[Batch]) -> int:
        """Send ``batches`` and await their acks together; return how many leading batches
        were acknowledged (the rest are retried from the outbox, in order)."""
        futures: list[asyncio.Future] = []
        try:
            for batch in batches:
                futures.append(
                    await js.publish_async(
                        batch.subject,
                        batch.payload,
                        wait_stall=self.ack_timeout_s,
                        headers={"Nats-Msg-Id": batch.batch_id},
                    )
                )
        except Exception as exc:
            log.debug("publish failed: %s", exc)
        if futures:
            # Wait for every ack, but stop early when the connection drops: then the
            # un-acked batches go to the outbox at once (their ids make a resend safe).
            if self._down.is_set() and self._jetstream() is not None:
                self._down.clear()  # stale: we are connected again
            acks = asyncio.ensure_future(asyncio.wait(futures))
            down = asyncio.ensure_future(self._down.wait())
            await asyncio.wait([acks, down], timeout=self.ack_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            acks.cancel()
            down.cancel()
        acked = 0
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                acked += 1
            else:
                break
        for future in futures:
            if not future.done():
                future.cancel()  # releases nats-py's in-flight slot
            elif not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warnings
        return acked

    async def _drain_loop(self) -> None:
        while True:
            await self._drain_wake.wait()
            self._drain_wake.clear()
            while self.outbox.depth or self._to_outbox:
                js = self._jetstream()
                if js is None:
                    break  # kick() wakes us when the connection is back
                try:
                    await self._drain_window(js)
                except Exception:
                    log.exception("rollout SDK: draining the outbox failed; retrying")
                    await asyncio.sleep(0.5)

    async def _drain_window(self, js: JetStreamContext) -> None:
        rows = await self.outbox.peek(WINDOW)
        if not rows:
            await asyncio.sleep(0.01)  # a put is being committed
            return
        acked = await self._publish(js, [b for _, b in rows])
        if acked:
            await self.outbox.delete(rows[:acked])
            m.PUBLISHED.labels("outbox").inc(sum(b.events for _, b in rows[:acked]))
            self._gauge.set(self.outbox.depth)
        if acked < len(rows):
            m.PUBLISH_ERRORS.labels("outbox_retry").inc(len(rows) - acked)
            await asyncio.sleep(0.25)

    # --- flush and close ----------------------------------------------------------------
    async def flush(self, timeout: float = 10.0) -> None:
        """Seal every open buffer and wait until each sealed batch is acked or in the outbox.

        Events recorded while the flush waits are not waited for (they may keep coming)."""
        if self._timer is not None:
            self._timer.cancel()
        self._seal_all()
        if self.buffered:
            self._wake.set()
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def drain_outbox(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty; True when it did."""
        deadline = time.monotonic() + timeout
        self._drain_wake.set()
        while (self.outbox.depth or self._to_outbox) and time.monotonic() < deadline:
            if self._jetstream() is None:
                return False
            await asyncio.sleep(0.01)
        return not (self.outbox.depth or self._to_outbox)

    async def close(self, timeout: float = 10.0) -> None:
        """Flush, give the outbox ``timeout`` to drain if connected, then stop the tasks."""
        try:
            await self.flush(timeout)
            await self.drain_outbox(timeout)
        finally:
            self._closing = True
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
