"""A consumer's SQLite store: projection state, stream position and outbox in one transaction.

Tables (one file per consumer, ``DATA_DIR/consumers/<name>.sqlite``, WAL mode):

- ``tracking(consumer, seq)``: the last stream sequence folded. Its primary key makes
  a second commit of the same position fail (pyeventsourcing's tracking records), so
  two processes running one consumer by mistake cannot both commit a batch.
- ``parts(consumer, key, data)``: the projection's snapshot, as parts (one per rollout
  for incremental projections, a single ``""`` part otherwise).
- ``outbox(consumer, id, subject, data, headers, attempts, salt)``: events and dead
  letters to publish. The relay (``consumers/relay.py``) counts an attempt in
  ``attempts`` *before* each publish, publishes with ``Nats-Msg-Id`` = the keyed id of
  ``id`` (and ``salt``), and deletes the row once JetStream acknowledged it. So a crash
  between commit and publish republishes, JetStream drops the duplicate, and the relay
  knows the duplicate is its own (``attempts`` > 0); a duplicate for a row never
  attempted means someone else took the id first.
- ``seen(consumer, n, full, data)``: the producer event ids the consumer has folded
  (``consumers.dedupe``): what each batch added, in order, and now and then the whole
  set (a full write replaces every earlier row). Committed with the position, so a
  restarted consumer de-duplicates exactly as one that never stopped.
- ``unmirrored(consumer, key, seq)``, with ``mirrored=True`` (a consumer with a KV mirror):
  the rollouts whose committed part KV may not have yet (``consumers.unmirrored``).

Everything a batch produced goes in :meth:`SQLiteConsumerStore.commit`, in ONE
transaction: a crash at any instant leaves either the old or the new state, never half.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from rollout_engine.consumers import unmirrored
from rollout_engine.consumers.dedupe import SeenWrite
from rollout_engine.consumers.outbox import OutboxRow

__all__ = ["ConsumerLocked", "DuplicateCommit", "SQLiteConsumerStore", "StoreStalled", "StoredState", "fault_of"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking (consumer TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (consumer, seq));
CREATE TABLE IF NOT EXISTS parts (consumer TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (consumer, key));
CREATE TABLE IF NOT EXISTS outbox (consumer TEXT NOT NULL, id TEXT NOT NULL, subject TEXT NOT NULL,
    data BLOB NOT NULL, headers BLOB, attempts INTEGER NOT NULL DEFAULT 0, salt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, id));
CREATE TABLE IF NOT EXISTS seen (consumer TEXT NOT NULL, n INTEGER PRIMARY KEY AUTOINCREMENT, full INTEGER NOT NULL,
    data BLOB NOT NULL);
"""
_OUTBOX_COLUMNS = {"attempts": "INTEGER NOT NULL DEFAULT 0", "salt": "INTEGER NOT NULL DEFAULT 0"}
"""Columns added after the first release: stores written before get them on open."""


class ConsumerLocked(RuntimeError):
    """Another process already runs this consumer on this data directory."""


class DuplicateCommit(RuntimeError):
    """The tracking row already exists: another process committed this position."""


class StoreStalled(RuntimeError):
    """Stopped while the store refused a commit: the batch was neither committed nor acked."""


_FAULTS = {"SQLITE_BUSY": "locked", "SQLITE_LOCKED": "locked", "SQLITE_READONLY": "read_only",
           "SQLITE_FULL": "disk_full", "SQLITE_IOERR": "io_error", "SQLITE_CANTOPEN": "io_error"}


def fault_of(exc: BaseException) -> str | None:
    """The transient store fault ``exc`` reports (``locked``, ``read_only``, ``disk_full``,
    ``io_error``), or None when it is a bug rather than the environment.

    These clear without touching the data (a lock is released, a disk is remounted
    read-write or freed), so the runtime waits and retries the same commit instead of
    dying: see :meth:`SQLiteConsumerStore.commit_waiting`.
    """
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, reason in _FAULTS.items():
        if name.startswith(prefix):
            return reason
    text = str(exc).lower()  # errors raised before SQLite answered carry no code
    if "locked" in text:
        return "locked"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "disk is full" in text:
        return "disk_full"
    return None


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a consumer resumes from."""

    seq: int
    parts: dict[str, bytes]
    outbox: list[OutboxRow]
    seen: list[SeenWrite] = field(default_factory=list)


class SQLiteConsumerStore:
    """The aiosqlite store of one consumer (see the module docstring for the tables)."""

    def __init__(self, path: str | Path, consumer: str, *, exclusive: bool = True, mirrored: bool = False) -> None:
        """``exclusive`` holds ``<store>.lock`` (flock) while open, so a second process of
        the same consumer fails at start instead of interleaving its commits with the
        first's; the kernel drops the lock when the holder dies, even by SIGKILL.
        Readers (``rollout consumer NAME --digest``) pass ``exclusive=False``.
        ``mirrored``: the consumer has a KV mirror; each commit lists the rollouts it
        changed in ``unmirrored`` until the mirror confirms their puts."""
        self.path = Path(path)
        self.consumer = consumer
        self.exclusive = exclusive
        self.mirrored = mirrored
        self._writing = asyncio.Lock()  # one transaction at a time on the one connection
        self._db: aiosqlite.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._lock: int | None = None

    @classmethod
    def for_consumer(cls, data_dir: str | Path, consumer: str, *, exclusive: bool = True,
                     mirrored: bool = False) -> SQLiteConsumerStore:
        path = Path(data_dir) / "consumers" / f"{consumer}.sqlite"
        return cls(path, consumer, exclusive=exclusive, mirrored=mirrored)

    def _take_lock(self) -> None:
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConsumerLocked(
                f"consumer {self.consumer!r} is already running on {self.path.parent} (pid {holder}); "
                "stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    async def wait_lock(self, stop: asyncio.Event, poll_s: float = 0.02) -> bool:
        """Wait (warm standby) until no other process holds this consumer's lock, then hold it.

        The kernel releases a dead holder's flock at once, even after SIGKILL, so a standby
        that has imported, built and connected takes over within ``poll_s`` of the crash.
        Returns False when ``stop`` is set first.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._lock is None:
            try:
                self._take_lock()
            except ConsumerLocked:
                if stop.is_set():
                    return False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_s)
        return True

    async def open(self) -> SQLiteConsumerStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.exclusive and self._lock is None:
            self._take_lock()
        db = await aiosqlite.connect(self.path, isolation_level=None)
        # WAL + synchronous=NORMAL survives a process crash (SIGKILL) at any instant;
        # a power loss may lose the last commits, which the log then replays.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(_SCHEMA)
        async with db.execute("PRAGMA table_info(outbox)") as cur:
            have = {row[1] async for row in cur}
        for column, kind in _OUTBOX_COLUMNS.items():
            if column not in have:
                await db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self._db = db
        if self.mirrored:  # a store older than the table lists every rollout, once
            await self._transaction(unmirrored.add_table, self.consumer)
        return self

    async def _transaction(self, write: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """``write(db, *args)`` in one transaction, never inside a commit's."""
        db = self.db
        async with self._writing:
            await db.execute("BEGIN IMMEDIATE")  # a locked store raises here, before anything started
            try:
                await write(db, *args)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite already rolled back after SQLITE_FULL and some I/O errors
                    await db.execute("ROLLBACK")
                raise

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"store {self.path} is not open; call `await store.open()` first")
        return self._db

    async def close(self) -> None:
        if self._read is not None:
            self._read.close()
            self._read = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    async def __aenter__(self) -> SQLiteConsumerStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def load(self, parts: bool = True) -> StoredState:
        """The committed position, snapshot parts (none with ``parts=False``: the caller
        streams them with :meth:`iter_parts`) and unpublished outbox rows."""
        db = self.db
        async with db.execute("SELECT MAX(seq) FROM tracking WHERE consumer = ?", (self.consumer,)) as cur:
            row = await cur.fetchone()
        seq = int(row[0]) if row and row[0] is not None else 0
        stored: dict[str, bytes] = {}
        if parts:
            async with db.execute("SELECT key, data FROM parts WHERE consumer = ? ORDER BY key", (self.consumer,)) as cur:
                stored = {key: bytes(data) async for key, data in cur}
        async with db.execute("SELECT full, data FROM seen WHERE consumer = ? ORDER BY n", (self.consumer,)) as cur:
            seen = [SeenWrite(bool(full), bytes(data)) async for full, data in cur]
        return StoredState(seq, stored, await self.pending(), seen)

    # --- committed parts read now (consumers.resident: resting rollouts) ----------------
    def _reader(self) -> sqlite3.Connection:
        """A read-only connection of this thread: a resting rollout is loaded between two
        folds, synchronously, so no other task runs between its read and its fold. WAL
        lets it read the last commit while the writer works."""
        if self._read is None:
            self._read = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        return self._read

    def read_parts(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The committed parts of ``keys`` (those that have one), in as few queries as possible."""
        wanted, out = list(keys), {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._reader().execute(f"SELECT key, data FROM parts WHERE consumer = ? AND key IN ({marks})",
                                          (self.consumer, *chunk))
            out.update((key, bytes(data)) for key, data in rows)
        return out

    def iter_parts(self) -> Iterator[tuple[str, bytes]]:
        """Every committed part in key order, one at a time (memory stays flat for 100,000 rollouts)."""
        rows = self._reader().execute("SELECT key, data FROM parts WHERE consumer = ? ORDER BY key", (self.consumer,))
        for key, data in rows:
            yield key, bytes(data)

    async def pending(self) -> list[OutboxRow]:
        async with self.db.execute(
            "SELECT id, subject, data, headers, attempts, salt FROM outbox WHERE consumer = ? ORDER BY rowid",
            (self.consumer,),
        ) as cur:
            return [OutboxRow(i, s, bytes(d), None if h is None else bytes(h), a, n) async for i, s, d, h, a, n in cur]

    async def commit(self, seq: int, parts: Mapping[str, bytes], outbox: Iterable[OutboxRow] = (),
                     seen: SeenWrite | None = None) -> None:
        """Record position ``seq``, changed parts (``mirrored``: their rollouts as not yet in
        KV), outbox rows and the seen ids' write atomically."""
        await self._transaction(self._commit, seq, parts, outbox, seen)

    async def _commit(self, db: aiosqlite.Connection, seq: int, parts: Mapping[str, bytes],
                      outbox: Iterable[OutboxRow], seen: SeenWrite | None) -> None:
        try:
            await db.execute("INSERT INTO tracking (consumer, seq) VALUES (?, ?)", (self.consumer, seq))
        except sqlite3.IntegrityError:
            raise DuplicateCommit(
                f"consumer {self.consumer!r} already committed sequence {seq} in {self.path}; "
                "is a second process running this consumer?"
            ) from None
        await db.execute("DELETE FROM tracking WHERE consumer = ? AND seq < ?", (self.consumer, seq))
        if parts:
            await db.executemany("INSERT OR REPLACE INTO parts (consumer, key, data) VALUES (?, ?, ?)",
                                 [(self.consumer, key, data) for key, data in parts.items()])
            if self.mirrored:
                await unmirrored.record(db, self.consumer, seq, parts)
        rows = [(self.consumer, r.id, r.subject, r.data, r.headers) for r in outbox]
        if rows:
            await db.executemany(
                "INSERT OR IGNORE INTO outbox (consumer, id, subject, data, headers) VALUES (?, ?, ?, ?, ?)", rows
            )
        if seen is not None:
            if seen.full:
                await db.execute("DELETE FROM seen WHERE consumer = ?", (self.consumer,))
            await db.execute("INSERT INTO seen (consumer, full, data) VALUES (?, ?, ?)",
                             (self.consumer, int(seen.full), seen.data))

    async def commit_waiting(self, seq: int, parts: Mapping[str, bytes], outbox: list[OutboxRow], *, metrics: Any,
                             name: str, stopping: Callable[[], bool], seen: SeenWrite | None = None) -> None:
        """:meth:`commit`, waiting out a store fault (locked, read-only, full disk, I/O error).

        While the store refuses, the consumer acks nothing and takes no further events
        beyond the one batch the commit lane folds beside it (``consumers.lane``): the
        messages stay unacked, and redeliveries are skipped once committed.
        It logs the fault once, counts every failed attempt in ``metrics.store_errors``
        (``rollout_consumer_store_errors_total{reason}``) and sets ``metrics.stalled`` to 1;
        the same commit is retried with backoff until it succeeds. Stopped while stalled
        (``stopping()``), it raises :class:`StoreStalled` (nothing was committed or acked).
        """
        delay, since = 0.05, 0.0
        while True:
            try:
                await self.commit(seq, parts, outbox, seen)
            except Exception as exc:
                reason = fault_of(exc)
                if reason is None:
                    raise
                metrics.store_errors.labels(name, reason).inc()
                if not since:
                    since = time.monotonic()
                    metrics.stalled.labels(name).set(1)
                    log.error("%s: store %s refused the commit of sequence %d (%s: %s); taking no events and "
                              "retrying until the fault clears (free disk space, release the lock, make it writable)",
                              name, self.path, seq, reason, exc)
                if stopping():
                    raise StoreStalled(f"consumer {name!r} stopped while its store {self.path} refused "
                                       f"the commit of sequence {seq} ({reason}: {exc}); nothing was acked, "
                                       "the next run folds these events again") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if since:
                metrics.stalled.labels(name).set(0)
                log.warning("%s: store accepts commits again after %.1f s; resuming at sequence %d",
                            name, time.monotonic() - since, seq)
            return

    async def unmirrored_rollouts(self) -> list[str]:
        """The rollouts whose committed part KV may not have, the longest waiting first (none
        without a mirror)."""
        return await unmirrored.listed(self.db, self.consumer) if self.mirrored else []

    async def confirm_mirrored(self, confirmed: Mapping[str, int]) -> None:
        """Forget the rollouts whose KV put succeeded (rollout -> position its value was made
        at; one changed by a later commit stays listed), in one transaction."""
        if confirmed and self.mirrored:
            await self._transaction(unmirrored.forget, self.consumer, confirmed)

    async def mark_attempted(self, ids: Iterable[str]) -> None:
        """Count a publish attempt for each row, committed before the publish leaves.

        After a crash the relay then knows which rows may already be in the log: a
        duplicate acknowledgement for one of those is its own earlier publish.
        """
        batch = [(self.consumer, i) for i in ids]
        if batch:
            await self.db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE consumer = ? AND id = ?", batch)

    async def resalt(self, row_id: str, salt: int) -> None:
        """Give a row a new message id (``salt``) with no attempt under it yet."""
        await self.db.execute("UPDATE outbox SET salt = ?, attempts = 0 WHERE consumer = ? AND id = ?",
                              (salt, self.consumer, row_id))

    async def delete_outbox(self, ids: Iterable[str]) -> None:
        """Forget rows the relay has published (acknowledged by JetStream)."""
        batch = [(self.consumer, i) for i in ids]
        if batch:
            await self.db.executemany("DELETE FROM outbox WHERE consumer = ? AND id = ?", batch)
