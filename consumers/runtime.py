"""The consumer runtime shared by every projection: log -> fold -> one commit -> ack -> relay.

One process per consumer (``rollout consumer NAME``). The loop, per fetched batch:

1. fetch up to ``consumer_batch`` messages from a durable pull consumer on ``RO_LOG`` (the
   whole log: a gap means something is wrong); a ``TimeoutError`` means "no data";
2. fold them with :class:`consumers.folding.Folder`, the one fold replay runs too (skip
   what is committed, hold what follows a gap and fill it by a direct get, dead-letter the
   bad), a slice at a time (``consumers.early``: 16 messages or 16 KB): what a slice emits (a kill switch)
   is published at once under its deterministic id, before the commit (``publish_early``);
3. commit the changed parts (with a KV mirror, listed as not yet in KV: ``consumers.unmirrored``),
   the last sequence, the outbox rows (emitted events JetStream did not already store,
   dead letters) and the seen ids the batch added (``consumers.dedupe``) in ONE transaction,
   while the next batch is folded (``consumers.lane``: one commit in flight, in order);
4. ack the messages; 5. relay the outbox (``consumers/relay.py``: ``Nats-Msg-Id`` = the
   engine's keyed id of the row id), delete what JetStream stored;
6. run the consumer's KV mirror (``consumers.mirror``) and ``after_commit`` hook, then
   let the least recently touched rollouts rest out of memory (``consumers.resident``).

A crash between any two steps is harmless: before 3 the next process refolds the same
messages, emits the same commands with the same ids and JetStream drops what 2 already
stored; between 3 and 4 the redeliveries are at or below the committed sequence and are
skipped; between 4 and 5 the outbox is relayed on start and JetStream drops duplicates.

On start, and after a lost delivery, the durable consumer is re-created at the committed
sequence + 1 (SQLite is the truth, the consumer a cursor). Partitioned (``partition=k``,
docs/scaling.md): ``<name>_p<k>`` filters partition ``k`` and the ticks, and order is checked
on the delivery sequence (stream sequences have holes by design there).

A consumer module registers a ``ConsumerSpec`` and exposes ``build(settings) -> Consumer``
(``consumers/stats_consumer.py``); the engine passes settings, NATS and metrics in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from rollout_engine.consumers.consumer import (
    NO_METRICS,
    Consumer,
    RunSummary,
    RuntimeMetrics,
    RuntimeSettings,
    restore,
    store_name,
)
from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.consumers.delivery import DeliveryOrder
from rollout_engine.consumers.early import fold_slices
from rollout_engine.consumers.folding import BatchResult, Folder
from rollout_engine.consumers.jetstream import first_seq, get_message, log_message, subscribe
from rollout_engine.consumers.lane import CommitLane, count_commit
from rollout_engine.consumers.outbox import OutboxRow
from rollout_engine.consumers.relay import MessageIds, OutboxRelay, Signer
from rollout_engine.consumers.resident import resident_for
from rollout_engine.consumers.store import SQLiteConsumerStore
from rollout_engine.events import LogMessage, subjects

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """Run one consumer against NATS until stopped (or, with ``until_idle``, caught up)."""

    def __init__(
        self,
        consumer: Consumer,
        settings: RuntimeSettings,
        *,
        nc: Client | None = None,
        connect: Callable[[], Awaitable[Client]] | None = None,
        batch: int | None = None,
        until_idle: bool = False,
        fetch_timeout: float = 0.5,
        metrics: RuntimeMetrics | None = None,
        partition: int | None = None,
        msg_ids: MessageIds | None = None,
        signer: Signer | None = None,
        standby: bool = False,
    ) -> None:
        """``nc`` is a connection to use (not closed here); without one, ``connect()``
        makes one when the run starts (closed at the end). ``msg_ids`` makes the keyed
        ``Nats-Msg-Id`` of what the consumer emits (the deployment's key: engine code passes
        ``EngineIds.load(settings)``); ``signer`` signs its control commands
        (``CommandSigner.load(settings)``). ``metrics`` default to none. ``standby``: when
        another process runs this consumer, wait for its store lock (warm: built,
        connected) and take over the moment it exits, instead of failing."""
        if nc is None and connect is None:
            raise ValueError("Runner needs a NATS connection: pass nc=, or connect= (engine code passes "
                             "engine.bus.connect; see engine/stack/consumer_runner.py)")
        if msg_ids is None or signer is None:
            raise ValueError("Runner needs the engine's message ids and command signer (msg_ids=EngineIds.load("
                             "settings), signer=CommandSigner.load(settings)): run it through engine/stack/consumer_runner.py")
        self.consumer = consumer
        self.projection = consumer.projection
        self.partition = partition
        self.name = store_name(consumer.projection.name, partition)
        self.settings = settings
        self.batch = batch or settings.consumer_batch
        self.until_idle = until_idle
        self.standby = standby
        self.fetch_timeout = fetch_timeout
        self.metrics = metrics or NO_METRICS
        self.store = SQLiteConsumerStore.for_consumer(settings.data_dir, self.name, mirrored=consumer.mirror is not None)
        self.relay = OutboxRelay(self.name, self.store, msg_ids, self.metrics, signer)
        self.resident = resident_for(consumer, settings.resident_rollouts, self.store.read_parts, self.metrics.rollouts,
                                     self.name)  # resting rollouts (consumers.resident), None when none can rest
        self.folder = Folder(self.projection, consumer=self.name, contiguous=partition is None,
                             seen=SeenIds(settings.dedupe_window_s, journal=True), resident=self.resident)
        self.lane = CommitLane()
        self.delivery = DeliveryOrder(self.name)  # partitioned: holes in the delivery sequence
        self.stop_event = asyncio.Event()
        self.dead_letters = 0
        self._nc = nc
        self._connect = connect
        self._own_nc = nc is None
        self._kv: Any = None
        self._sub: Any = None

    # --- edges available to hooks ------------------------------------------------------
    @property
    def nc(self) -> Client:
        assert self._nc is not None, "runner is not connected"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    async def kv(self) -> Any:
        """The ``ro_state`` KV bucket."""
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.STATE_BUCKET)
        return self._kv

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit, and return (signal-safe)."""
        self.stop_event.set()

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> RunSummary:
        if self.standby and not await self._stand_by():
            return RunSummary(self.name, 0, 0, 0, "")  # stopped while standing by: nothing was ours
        await self.store.open()
        try:
            stored = await self.store.load(parts=self.resident is None)
            restore(self.projection, self.store.iter_parts() if self.resident else stored.parts, self.store.path,
                    self.resident)
            self.folder.seq = stored.seq
            if self.folder.seen is not None:
                self.folder.seen.load(stored.seen)
            self.metrics.position.labels(self.name).set(stored.seq)
            self.metrics.stalled.labels(self.name).set(0)  # a series from the start, 0 after a restart
            self.metrics.duplicate_events.labels(self.name).inc(0)  # a series from the start (PITFALLS)
            await self._connected()
            await self._relay(stored.outbox)
            await self._run_hooks("on_start")  # publishing is not state: fold anyway
            self._sub = await self._subscribe()
            try:
                await self._loop()
            finally:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
            await self._run_hooks("on_stop")
            digest = self.resident.digest() if self.resident else self.projection.digest()
        finally:
            await self.store.close()
            if self._own_nc and self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.drain()
        return RunSummary(self.name, self.folder.seq, self.folder.events, self.dead_letters, digest)

    async def _connected(self) -> None:
        if self._nc is None:
            assert self._connect is not None
            self._nc = await self._connect()

    async def _stand_by(self) -> bool:
        """Connect first, then wait for the store lock: the takeover costs no connect (False: stopped)."""
        await self._connected()
        if await self.store.wait_lock(self.stop_event):
            return True
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        return False

    async def _run_hooks(self, name: str, *args: Any) -> None:
        """The mirror's hook ``name`` (when there is a mirror), then the consumer's own;
        one that raises is logged and the runner goes on (hooks publish, they hold no state)."""
        mirror = self.consumer.mirror
        for hook in (getattr(mirror, name, None), getattr(self.consumer, name)):
            if hook is not None:
                try:
                    await hook(self, *args)
                except Exception:
                    log.exception("%s: %s hook failed; continuing", self.name, name)

    async def _subscribe(self, wait_s: float = 60.0) -> Any:
        """(Re)create the durable consumer at the committed position + 1 and bind to it."""
        self.delivery.restart()
        return await subscribe(self.js, self.name, self.folder.seq + 1, partition=self.partition,
                               settings=self.settings, batch=self.batch, stopping=self.stop_event.is_set,
                               wait_s=wait_s)

    async def _rewind(self, ahead: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Drop the current pull and re-create the consumer at the committed position + 1."""
        log.warning("%s: a delivery was lost; rewinding to sequence %d", self.name, self.folder.seq + 1)
        ahead.cancel()
        with contextlib.suppress(BaseException):
            await ahead
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        self._sub = await self._subscribe()
        return self._fetch()

    def _fetch(self) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self._sub.fetch(self.batch, timeout=self.fetch_timeout))

    async def _loop(self) -> None:
        # The next pull request is issued before the current batch is folded, so the
        # server streams it into our buffer while we work (measured: +15-25% events/s).
        ahead = self._fetch()
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    msgs = await ahead
                except TimeoutError:
                    failures = 0
                    ahead = self._fetch()
                    if await self._idle():
                        return
                    if self.delivery.should_rewind:  # partitioned: messages pending, none delivered
                        ahead = await self._rewind(ahead)
                    continue
                except NatsError as exc:  # reconnecting, server restarted, consumer gone...
                    failures += 1
                    log.warning("%s: fetch failed (%s: %s); retrying", self.name, type(exc).__name__, exc)
                    await asyncio.sleep(0.25)
                    if failures % 8 == 0:  # two seconds of errors: re-create the consumer
                        with contextlib.suppress(Exception):
                            self._sub = await self._subscribe(wait_s=0)
                    ahead = self._fetch()
                    continue
                failures = 0
                ahead = self._fetch()
                if not msgs:  # an empty fetch (a status reply): nothing to fold or ack
                    continue
                self.delivery.stuck = 0
                whole = len(msgs)
                if self.partition is not None:
                    msgs = msgs[: self.delivery.in_order(msgs)]
                if not msgs:
                    ahead = await self._rewind(ahead)
                    continue
                await self._process([log_message(m) for m in msgs], msgs)
                if len(msgs) < whole:
                    ahead = await self._rewind(ahead)
                    continue
                pending = msgs[-1].metadata.num_pending
                # The server says nothing more is pending: check at once rather than after
                # a fetch timeout (``--until-idle`` ends as soon as it is caught up).
                if self.until_idle and pending == 0 and await self._idle():
                    return
        finally:
            # What the pending fetch delivers stays unacked: the next process re-creates
            # the consumer at its committed position, so nothing is lost.
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
            await self._landed()  # the last batch handed to the lane is committed (or raises)

    async def _process(self, messages: list[LogMessage], acks: Sequence[Any] = ()) -> BatchResult:
        """Fold (publishing what is emitted at once) and fill gaps, then hand the commit,
        the acks of ``acks``, the relay and the hooks to the lane once the previous commit landed."""
        start = self.folder.seq
        total = BatchResult(start)
        early = await fold_slices(self.folder, messages, total, self.relay, self.js)
        while total.held:
            await self._fill_gap(total)
        if total.skipped:
            self.metrics.duplicates.labels(self.name).inc(total.skipped)
        if total.duplicates:
            self.metrics.duplicate_events.labels(self.name).inc(total.duplicates)
            log.debug("%s: %d events not folded, their ids seen already", self.name, total.duplicates)
        if total.seq == start:
            await self._landed()
            await self._ack(acks)  # all at or below a committed position
            return total
        if not total.parts and total.messages == 0:
            total.parts = self.projection.changed_parts()
        stored = await self.relay.settle_early(early)  # published and stored: nothing left to relay
        rows = [row for row in Folder.outbox_of(total) if row.id not in stored]
        seen = self.folder.seen.flush() if self.folder.seen is not None else None
        await self._landed(keep=total.parts)  # a store fault stalls here: no further batch is taken
        self.lane.start(self._commit(total, rows, seen, acks))
        return total

    async def _commit(self, total: BatchResult, rows: list[OutboxRow], seen: Any, acks: Sequence[Any]) -> BatchResult:
        """The lane's work for one batch: commit, ack, relay, run the hooks."""
        began = time.perf_counter()
        await self.store.commit_waiting(total.seq, total.parts, rows, metrics=self.metrics, name=self.name,
                                        stopping=self.stop_event.is_set, seen=seen)
        count_commit(self.metrics, self.name, total, time.perf_counter() - began)
        self.dead_letters += len(total.dead)
        await self._ack(acks)
        await self._relay(rows)
        await self._run_hooks("after_commit", total)  # the state is committed: a failure is logged
        return total

    async def _landed(self, keep: Container[str] = ()) -> None:
        """Wait for the lane's commit; then the least recently touched rollouts may rest,
        except those in ``keep`` (parts folded since, not yet committed)."""
        done = await self.lane.landed()
        if done is not None and self.resident is not None:
            self.resident.settle(done.parts, keep=keep)

    @staticmethod
    async def _ack(msgs: Sequence[Any]) -> None:
        for m in msgs:
            with contextlib.suppress(Exception):  # an ack lost is a harmless redelivery
                await m.ack()

    async def _fill_gap(self, total: BatchResult) -> None:
        """The next sequence is missing from what was delivered: get it directly, or skip it."""
        held, total.held = total.held, []
        wanted = self.folder.seq + 1
        message = await get_message(self.js, wanted)
        if message is None:
            first = await first_seq(self.js)
            self.folder.skip_to(max(wanted, first - 1) if first > wanted else wanted)
        total.merge(self.folder.fold_batch(([message] if message else []) + held))

    async def _idle(self) -> bool:
        """Nothing fetched: relay leftovers, catch up a stuck tail; True when done (until_idle)."""
        await self._landed()
        pending = await self.store.pending()
        if pending:
            await self._relay(pending)
        await self._run_hooks("after_commit", BatchResult(self.folder.seq))
        if self.partition is not None:
            return await self._idle_partition()
        try:
            info = await self.js.stream_info(subjects.LOG_STREAM)
        except Exception as exc:
            log.warning("%s: stream info failed: %s", self.name, exc)
            return False
        last = self._not_ahead(int(info.state.last_seq))
        if last > self.folder.seq:
            # Messages exist but none were delivered (an orphaned pull, a delivery lost in
            # a reconnect): read the next ones directly rather than wait for ack_wait.
            tail = [d for d in [await get_message(self.js, s) for s in range(self.folder.seq + 1, min(last, self.folder.seq + 64) + 1)] if d]
            if tail:
                await self._process(tail)
            else:
                self.folder.skip_to(min(last, self.folder.seq + 64))
            return False
        return self.until_idle and not await self.store.pending()

    async def _idle_partition(self) -> bool:
        """Idle check of a partition: the consumer's own counts say whether it is caught up.

        Undelivered (``num_pending``) or unacked (``num_ack_pending``) messages while no
        fetch returns anything, twice in a row, mean a lost pull: the loop rewinds.
        """
        try:
            info = await self.js.consumer_info(subjects.LOG_STREAM, self.name)
            stream = await self.js.stream_info(subjects.LOG_STREAM)
        except Exception as exc:
            log.warning("%s: consumer info failed: %s", self.name, exc)
            return False
        self._not_ahead(int(stream.state.last_seq))
        self.delivery.idle(info.num_pending, info.num_ack_pending)
        if self.delivery.stuck:
            return False
        return self.until_idle and not await self.store.pending()

    def _not_ahead(self, last: int) -> int:
        """The stream's last sequence, checked: below the committed position, the stream was recreated."""
        if last < self.folder.seq:
            raise RuntimeError(
                f"consumer {self.name!r} is at sequence {self.folder.seq} but stream {subjects.LOG_STREAM} ends at {last}: "
                f"the stream was recreated. Delete {self.store.path} to rebuild the projection from the log")
        return last

    async def _relay(self, rows: list[OutboxRow]) -> None:
        """Publish outbox rows under the engine's keyed ids; delete the ones JetStream stored."""
        await self.relay.relay(self.js, rows)
