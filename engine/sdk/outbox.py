"""The SDK's durable outbox: batches that could not reach JetStream wait here, in order.

One SQLite file (WAL mode, through aiosqlite so the event loop never blocks on disk)
holds a table of encoded batches keyed by their batch id, which is also the batch's
``Nats-Msg-Id``. Rows are re-sent in insertion order and deleted only after JetStream
acknowledged them, so a crash between the send and the delete re-sends a batch that
JetStream then de-duplicates (within the stream's duplicate window, 5 minutes by
default: an outbox that stays undrained for longer may deliver a batch twice if its
first send had in fact been stored; consumers track event ids for that case).

The file survives the process: a new client opened on the same path drains what an
earlier one left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

__all__ = ["Batch", "Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    subject  TEXT NOT NULL,
    payload  BLOB NOT NULL,
    events   INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Batch:
    """One JetStream message: ``events`` encoded events for one subject.

    ``batch_id`` is deterministic (first event id + count), so every retry of the
    same batch carries the same ``Nats-Msg-Id`` and is stored once.
    """

    batch_id: str
    subject: str
    payload: bytes
    events: int


class Outbox:
    """Ordered, durable queue of batches in one SQLite file.

    Usage::

        outbox = await Outbox.open("data/outbox-checkout.sqlite")
        await outbox.put([batch])
        rows = await outbox.peek(64)      # [(seq, Batch), ...] oldest first
        await outbox.delete(rows)
    """

    def __init__(self, path: Path, db: aiosqlite.Connection, depth: int) -> None:
        self.path = path
        self._db = db
        self.depth = depth
        """Events (not batches) currently stored; kept in memory, read once at open."""

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Outbox:
        """Open (or create) the outbox at ``path`` and read how much it holds."""
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(file)
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (the case the outbox exists
            # for); only an OS crash or power loss could lose the last transactions.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute(_SCHEMA)
            await db.commit()
            async with db.execute("SELECT COALESCE(SUM(events), 0) FROM outbox") as cursor:
                row = await cursor.fetchone()
        except Exception as exc:
            raise OSError(
                f"cannot open the SDK outbox at {file}: {exc}; "
                "check that the directory is writable and the file is not another program's"
            ) from exc
        return cls(file, db, int(row[0]) if row else 0)

    async def put(self, batches: list[Batch]) -> None:
        """Append batches in order in one transaction; a batch id already stored is kept once."""
        if not batches:
            return
        before = self._db.total_changes
        await self._db.executemany(
            "INSERT OR IGNORE INTO outbox (batch_id, subject, payload, events) VALUES (?, ?, ?, ?)",
            [(b.batch_id, b.subject, b.payload, b.events) for b in batches],
        )
        await self._db.commit()
        if self._db.total_changes - before == len(batches):
            self.depth += sum(b.events for b in batches)
        else:  # some were already stored: count instead of guessing
            self.depth = await self._count()

    async def peek(self, limit: int) -> list[tuple[int, Batch]]:
        """The oldest ``limit`` batches with their row sequence, oldest first."""
        async with self._db.execute(
            "SELECT seq, batch_id, subject, payload, events FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [(seq, Batch(batch_id, subject, bytes(payload), events)) for seq, batch_id, subject, payload, events in rows]

    async def delete(self, rows: list[tuple[int, Batch]]) -> None:
        """Forget batches (as returned by :meth:`peek`) that JetStream has acknowledged."""
        if not rows:
            return
        before = self._db.total_changes
        await self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in rows])
        await self._db.commit()
        if self._db.total_changes - before == len(rows):
            self.depth -= sum(b.events for _, b in rows)
        else:
            self.depth = await self._count()

    async def _count(self) -> int:
        async with self._db.execute("SELECT COALESCE(SUM(events), 0) FROM outbox") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._db.close()
