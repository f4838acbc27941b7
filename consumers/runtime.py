"""The consumer runtime shared by every projection: log -> fold -> one commit -> ack -> relay.

One process per consumer (``rollout consumer NAME``). The loop, per fetched batch:

1. fetch up to ``consumer_batch`` messages from a durable pull consumer on ``RO_LOG``
   (the whole log, so stream sequences are contiguous and a gap means something is
   wrong); a fetch ``TimeoutError`` means "no data" and the fetch is re-issued;
2. fold them with :class:`consumers.folding.Folder` (skip what is committed, hold what
   is after a gap and fill the gap by a direct get, dead-letter what is bad);
3. commit the changed snapshot parts, the last sequence and the outbox rows (emitted
   events and dead letters) in ONE SQLite transaction;
4. ack the messages; 5. relay the outbox (``consumers/relay.py``: ``Nats-Msg-Id`` = the
   engine's keyed id of the row id), delete what JetStream stored;
6. run the consumer's ``after_commit`` hook (KV puts, stats snapshots).

A crash between any two steps is harmless: before 3 nothing happened; between 3 and 4
the redelivered messages are at or below the committed sequence and are skipped;
between 4 and 5 the outbox is relayed on start and JetStream drops duplicates.

On start the durable JetStream consumer is re-created at the committed sequence + 1:
the SQLite position is the truth, the JetStream consumer only a cursor, so nothing
pending from a previous process can arrive out of order.

Partitioned (``Runner(..., partition=k)``, docs/scaling.md): the log stores every
rollout's subjects with its partition number, and the runner's durable consumer
(``<name>_p<k>``, its own SQLite store ``<name>_p<k>.sqlite``) filters partition ``k``
and the ticks. Stream sequences then have holes by design, so order is checked on the
consumer's delivery sequence, which JetStream numbers 1, 2, 3... for every delivery
(redeliveries included) from the consumer's creation: a hole or step back there means
a delivery was lost (a dropped pull, a leader change) and the runner rewinds, i.e.
re-creates the consumer at the committed position + 1, exactly as on start.

A consumer module registers a :class:`consumers.registry.ConsumerSpec` and exposes
``build(settings) -> Consumer``; see ``consumers/stats_consumer.py`` for an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from rollout_engine.consumers.folding import (
    BatchResult,
    Delivery,
    Folder,
    restore_parts,
    snapshot_parts,
)
from rollout_engine.consumers.projection import Projection, digest_of
from rollout_engine.consumers.relay import OutboxRelay
from rollout_engine.consumers.store import OutboxRow, SQLiteConsumerStore, fault_of
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.consumer_metrics import ConsumerMetrics, default_metrics
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.events import subjects

__all__ = ["Consumer", "Hook", "PartitionMismatch", "RunSummary", "Runner", "StoreIncompatible", "StoreStalled",
           "digest", "store_name", "stored_digest"]

log = logging.getLogger(__name__)

Hook = Callable[["Runner", BatchResult], Awaitable[None]]


@dataclass
class Consumer:
    """What a consumer module builds: the projection and its publishing hooks.

    ``on_start`` runs once after the state is restored (e.g. republish every KV key, in
    case the last process died between its commit and its KV puts); ``after_commit``
    after each committed batch and, with an empty result, when the log is idle.
    """

    projection: Projection
    after_commit: Hook | None = None
    on_start: Callable[[Runner], Awaitable[None]] | None = None
    on_stop: Callable[[Runner], Awaitable[None]] | None = None


class PartitionMismatch(RuntimeError):
    """The runner asks for a partition the log does not have."""


def store_name(consumer: str, partition: int | None) -> str:
    """Durable consumer and store name: ``<consumer>`` or ``<consumer>_p<partition>``."""
    return consumer if partition is None else f"{consumer}_p{partition}"


class StoreIncompatible(RuntimeError):
    """The stored snapshot does not restore into this projection (another version's)."""


class StoreStalled(RuntimeError):
    """Stopped while the store refused a commit: the batch was neither committed nor acked."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Where a run ended: position, events folded in this run, and the state digest."""

    consumer: str
    seq: int
    events: int
    dead_letters: int
    digest: str


def _merge(total: BatchResult, part: BatchResult) -> None:
    total.seq = part.seq
    total.events += part.events
    total.messages += part.messages
    total.skipped += part.skipped
    total.dead.extend(part.dead)
    total.outbox.extend(part.outbox)
    total.parts.update(part.parts)
    total.held = part.held


class Runner:
    """Run one consumer against NATS until stopped (or, with ``until_idle``, caught up)."""

    def __init__(
        self,
        consumer: Consumer,
        settings: Settings,
        *,
        nc: Client | None = None,
        batch: int | None = None,
        until_idle: bool = False,
        fetch_timeout: float = 0.5,
        metrics: ConsumerMetrics | None = None,
        partition: int | None = None,
        msg_ids: EngineIds | None = None,
        standby: bool = False,
    ) -> None:
        """``standby``: when another process runs this consumer, wait for its store lock
        (warm: built, imports done) and take over the moment it exits, instead of failing."""
        self.consumer = consumer
        self.projection = consumer.projection
        self.partition = partition
        self.name = store_name(consumer.projection.name, partition)
        self.settings = settings
        self.batch = batch or settings.consumer_batch
        self.until_idle = until_idle
        self.standby = standby
        self.fetch_timeout = fetch_timeout
        self.metrics = metrics or default_metrics()
        self.store = SQLiteConsumerStore.for_consumer(settings.data_dir, self.name)
        self.relay = OutboxRelay(self.name, self.store, msg_ids or EngineIds.load(settings), self.metrics)
        self.folder = Folder(self.projection, consumer=self.name, contiguous=partition is None)
        self._next_delivery = 1  # partitioned: the consumer sequence expected next
        self._stuck = 0  # partitioned: idle checks in a row that saw undelivered messages
        self.stop_event = asyncio.Event()
        self.dead_letters = 0
        self._nc = nc
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
            stored = await self.store.load()
            try:
                restore_parts(self.projection, stored.parts)
            except Exception as exc:
                raise StoreIncompatible(
                    f"consumer {self.name!r} cannot restore its state from {self.store.path} "
                    f"({type(exc).__name__}: {exc}); it was probably written by another version. "
                    f"Delete that file (and its -wal, -shm) to rebuild the projection from the log"
                ) from exc
            self.folder.seq = stored.seq
            self.metrics.position.labels(self.name).set(stored.seq)
            self.metrics.stalled.labels(self.name).set(0)  # a series from the start, 0 after a restart
            if self._nc is None:
                from rollout_engine.engine.bus import connect

                self._nc = await connect(self.settings, name=f"consumer-{self.name}")
            await self._relay(stored.outbox)
            if self.consumer.on_start is not None:
                try:
                    await self.consumer.on_start(self)
                except Exception:  # publishing is not state: fold anyway
                    log.exception("%s: on_start hook failed; continuing", self.name)
            self._sub = await self._subscribe_retrying()
            try:
                await self._loop()
            finally:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
            if self.consumer.on_stop is not None:
                try:
                    await self.consumer.on_stop(self)
                except Exception:
                    log.exception("%s: on_stop hook failed", self.name)
        finally:
            await self.store.close()
            if self._own_nc and self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.drain()
        return RunSummary(self.name, self.folder.seq, self.folder.events, self.dead_letters,
                          digest(self.projection))

    async def _stand_by(self) -> bool:
        """Connect first, then wait for the store lock: the takeover costs no connect (False: stopped)."""
        if self._nc is None:
            from rollout_engine.engine.bus import connect

            self._nc = await connect(self.settings, name=f"consumer-{self.name}")
        if await self.store.wait_lock(self.stop_event):
            return True
        if self._own_nc:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        return False

    async def _subscribe(self) -> Any:
        """(Re)create the durable consumer at the committed position + 1 and bind to it."""
        js = self.js
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.LOG_STREAM, self.name)
        start = self.folder.seq + 1
        filters = await self._partition_filters(js)
        self._next_delivery = 1
        config = ConsumerConfig(
            durable_name=self.name,
            description=f"rollout-engine consumer {self.name} (position kept in its SQLite store)",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=self.settings.consumer_max_deliver,
            max_ack_pending=max(4 * self.batch, 1000),
            filter_subjects=filters,
        )
        await js.add_consumer(subjects.LOG_STREAM, config)
        return await js.pull_subscribe_bind(durable=self.name, stream=subjects.LOG_STREAM)

    async def _partition_filters(self, js: JetStreamContext) -> list[str] | None:
        """Filter subjects of this runner's partition (None: the whole log)."""
        if self.partition is None:
            return None
        info = await js.stream_info(subjects.LOG_STREAM)
        transform = info.config.subject_transform
        count = subjects.partition_count(transform.dest if transform else None)
        if self.partition >= count:
            raise PartitionMismatch(
                f"consumer {self.name!r} asks for partition {self.partition} but stream {subjects.LOG_STREAM} has "
                f"{count or 'no'} partitions; create the log with `partitions` set (docs/scaling.md) or pick "
                f"partitions 0..{max(count - 1, 0)}"
            )
        return subjects.partition_filters(self.partition)

    async def _rewind(self, ahead: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Drop the current pull and re-create the consumer at the committed position + 1."""
        log.warning("%s: a delivery was lost; rewinding to sequence %d", self.name, self.folder.seq + 1)
        ahead.cancel()
        with contextlib.suppress(BaseException):
            await ahead
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        self._stuck = 0
        self._sub = await self._subscribe_retrying()
        return self._fetch()

    async def _subscribe_retrying(self, wait_s: float = 60.0) -> Any:
        """:meth:`_subscribe`, waiting out a cluster that does not answer yet.

        A JetStream cluster electing a leader (a node lost, or just started) times out
        API requests for a few seconds; anything else (no stream, a bad partition) is
        raised at once.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self._subscribe()
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
                if self.stop_event.is_set() or time.monotonic() > deadline:
                    raise
                log.warning("%s: could not create the consumer (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(0.5)

    def _in_order(self, msgs: list[Any]) -> int:
        """How many of ``msgs`` continue the consumer's delivery sequence without a hole."""
        for index, msg in enumerate(msgs):
            if msg.metadata.sequence.consumer != self._next_delivery:
                log.warning("%s: delivery %d arrived where %d was expected", self.name,
                            msg.metadata.sequence.consumer, self._next_delivery)
                return index
            self._next_delivery += 1
        return len(msgs)

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
                    if self._stuck >= 2:  # partitioned: messages pending but none delivered
                        ahead = await self._rewind(ahead)
                    continue
                except NatsError as exc:  # reconnecting, server restarted, consumer gone...
                    failures += 1
                    log.warning("%s: fetch failed (%s: %s); retrying", self.name, type(exc).__name__, exc)
                    await asyncio.sleep(0.25)
                    if failures % 8 == 0:  # two seconds of errors: re-create the consumer
                        with contextlib.suppress(Exception):
                            self._sub = await self._subscribe()
                    ahead = self._fetch()
                    continue
                failures = 0
                ahead = self._fetch()
                if not msgs:  # an empty fetch (a status reply): nothing to fold or ack
                    continue
                self._stuck = 0
                whole = len(msgs)
                if self.partition is not None:
                    msgs = msgs[: self._in_order(msgs)]
                if not msgs:
                    ahead = await self._rewind(ahead)
                    continue
                deliveries = [Delivery(m.metadata.sequence.stream, m.subject, m.data) for m in msgs]
                await self._process(deliveries)
                for m in msgs:
                    with contextlib.suppress(Exception):  # an ack lost is a harmless redelivery
                        await m.ack()
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

    async def _process(self, deliveries: list[Delivery]) -> BatchResult:
        """Fold, fill gaps, commit, relay, run the hook."""
        start = self.folder.seq
        total = BatchResult(start)
        _merge(total, self.folder.fold_batch(deliveries))
        while total.held:
            await self._fill_gap(total)
        if total.skipped:
            self.metrics.duplicates.labels(self.name).inc(total.skipped)
        if total.seq == start:
            return total
        if not total.parts and total.messages == 0:
            total.parts = snapshot_parts(self.projection, changed_only=True)
        rows = Folder.outbox_of(total)
        began = time.perf_counter()
        await self._commit(total.seq, total.parts, rows)
        self._count(total, time.perf_counter() - began)
        await self._relay(rows)
        if self.consumer.after_commit is not None:
            try:
                await self.consumer.after_commit(self, total)
            except Exception:
                log.exception("%s: after_commit hook failed (state is committed; continuing)", self.name)
        return total

    async def _commit(self, seq: int, parts: dict[str, bytes], rows: list[OutboxRow]) -> None:
        """Commit, waiting out a store fault (locked, read-only, full disk, I/O error).

        While the store refuses, the consumer takes no further events and acks nothing
        (the batch's messages stay unacked; redeliveries are skipped once committed).
        It logs the fault once, counts every failed attempt in
        ``rollout_consumer_store_errors_total{reason}`` and sets ``rollout_consumer_stalled``
        to 1; the same commit is retried with backoff until it succeeds. Stopped while
        stalled, it raises :class:`StoreStalled` (nothing was committed or acked).
        """
        delay, since = 0.05, 0.0
        while True:
            try:
                await self.store.commit(seq, parts, rows)
            except Exception as exc:
                reason = fault_of(exc)
                if reason is None:
                    raise
                self.metrics.store_errors.labels(self.name, reason).inc()
                if not since:
                    since = time.monotonic()
                    self.metrics.stalled.labels(self.name).set(1)
                    log.error("%s: store %s refused the commit of sequence %d (%s: %s); taking no events and "
                              "retrying until the fault clears (free disk space, release the lock, make it writable)",
                              self.name, self.store.path, seq, reason, exc)
                if self.stop_event.is_set():
                    raise StoreStalled(f"consumer {self.name!r} stopped while its store {self.store.path} refused "
                                       f"the commit of sequence {seq} ({reason}: {exc}); nothing was acked, "
                                       "the next run folds these events again") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if since:
                self.metrics.stalled.labels(self.name).set(0)
                log.warning("%s: store accepts commits again after %.1f s; resuming at sequence %d",
                            self.name, time.monotonic() - since, seq)
            return

    async def _fill_gap(self, total: BatchResult) -> None:
        """The next sequence is missing from what was delivered: get it directly, or skip it."""
        held, total.held = total.held, []
        wanted = self.folder.seq + 1
        delivery = await self._get(wanted)
        if delivery is None:
            first = await self._first_seq()
            self.folder.skip_to(max(wanted, first - 1) if first > wanted else wanted)
        _merge(total, self.folder.fold_batch(([delivery] if delivery else []) + held))

    async def _get(self, seq: int) -> Delivery | None:
        try:
            msg = await self.js.get_msg(subjects.LOG_STREAM, seq)
        except NotFoundError:
            return None
        return Delivery(seq, msg.subject or "", msg.data or b"")

    async def _first_seq(self) -> int:
        info = await self.js.stream_info(subjects.LOG_STREAM)
        return int(info.state.first_seq)

    async def _idle(self) -> bool:
        """Nothing fetched: relay leftovers, catch up a stuck tail; True when done (until_idle)."""
        pending = await self.store.pending()
        if pending:
            await self._relay(pending)
        if self.consumer.after_commit is not None:
            with contextlib.suppress(Exception):
                await self.consumer.after_commit(self, BatchResult(self.folder.seq))
        if self.partition is not None:
            return await self._idle_partition()
        try:
            info = await self.js.stream_info(subjects.LOG_STREAM)
        except Exception as exc:
            log.warning("%s: stream info failed: %s", self.name, exc)
            return False
        last = int(info.state.last_seq)
        if last < self.folder.seq:
            raise RuntimeError(
                f"consumer {self.name!r} is at sequence {self.folder.seq} but stream {subjects.LOG_STREAM} ends at {last}: "
                f"the stream was recreated. Delete {self.store.path} to rebuild the projection from the log"
            )
        if last > self.folder.seq:
            # Messages exist but none were delivered (an orphaned pull, a delivery lost in
            # a reconnect): read the next ones directly rather than wait for ack_wait.
            tail = [d for d in [await self._get(s) for s in range(self.folder.seq + 1, min(last, self.folder.seq + 64) + 1)] if d]
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
        if int(stream.state.last_seq) < self.folder.seq:
            raise RuntimeError(
                f"consumer {self.name!r} is at sequence {self.folder.seq} but stream {subjects.LOG_STREAM} ends at "
                f"{stream.state.last_seq}: the stream was recreated. Delete {self.store.path} to rebuild the projection"
            )
        if info.num_pending or info.num_ack_pending:
            self._stuck += 1
            return False
        self._stuck = 0
        return self.until_idle and not await self.store.pending()

    def _count(self, total: BatchResult, seconds: float) -> None:
        m, name = self.metrics, self.name
        m.events.labels(name).inc(total.events)
        m.messages.labels(name).inc(total.messages)
        m.commits.labels(name).inc()
        m.commit_seconds.labels(name).observe(seconds)
        m.position.labels(name).set(total.seq)
        for dead in total.dead:
            m.dead.labels(name, dead.field[:40]).inc()
            log.warning("%s: dead letter seq %d item %d: %s", name, dead.seq, dead.index, dead.reason[:300])
        self.dead_letters += len(total.dead)

    async def _relay(self, rows: list[OutboxRow]) -> None:
        """Publish outbox rows under the engine's keyed ids; delete the ones JetStream stored."""
        await self.relay.relay(self.js, rows)


async def stored_digest(consumer: Consumer, settings: Settings, partition: int | None = None) -> tuple[int, str]:
    """(position, digest) of a consumer's (or one partition's) committed state, from its store alone."""
    name = store_name(consumer.projection.name, partition)
    store = SQLiteConsumerStore.for_consumer(settings.data_dir, name, exclusive=False)
    if not store.path.exists():  # nothing committed yet: the empty state (create nothing)
        return 0, digest(consumer.projection)
    async with store:
        stored = await store.load()
    try:
        restore_parts(consumer.projection, stored.parts)
    except Exception as exc:
        raise StoreIncompatible(
            f"cannot restore {store.path} ({type(exc).__name__}: {exc}); delete it to rebuild from the log"
        ) from exc
    return stored.seq, digest(consumer.projection)


def digest(projection: Projection) -> str:
    """The projection's digest: its own streaming ``digest()`` when it has one."""
    own = getattr(projection, "digest", None)
    return own() if callable(own) else digest_of(projection.snapshot())
