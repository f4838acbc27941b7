"""The rollouts KV may not have yet: the ``unmirrored`` table of a mirrored consumer's store.

A consumer with a KV mirror (``consumers.mirror``) records, in the same SQLite transaction
as the parts (``consumers.store``), every rollout whose part a commit changed, with that
commit's position: ``unmirrored(consumer, key, seq)``. The mirror removes a rollout once a
put of a value made at a position at least ``seq`` succeeded, so a row changed by a later
commit stays. On start the mirror puts exactly what is listed: a restart after a clean run
puts nothing, a crash between a commit and its puts puts those rollouts, and no resting
rollout is loaded only to be put again.

A store written before this table gets it on open, listing every rollout once (what KV
holds of them is unknown), in one transaction with the table's creation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiosqlite

from rollout_engine.consumers.projection import META

__all__ = ["add_table", "forget", "listed", "record"]

_TABLE = ("CREATE TABLE unmirrored (consumer TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, "
          "PRIMARY KEY (consumer, key)) WITHOUT ROWID")  # one B-tree: measured ~10% cheaper per commit than a rowid table


async def add_table(db: aiosqlite.Connection, consumer: str) -> None:
    """Create the table with every committed rollout of ``consumer`` in it, unless it exists;
    the caller holds a transaction."""
    async with db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unmirrored'") as cur:
        if await cur.fetchone():
            return
    await db.execute(_TABLE)
    await db.execute("INSERT INTO unmirrored (consumer, key, seq) SELECT consumer, key, 0 FROM parts "
                     "WHERE consumer = ? AND key != ? ORDER BY key", (consumer, META))


async def record(db: aiosqlite.Connection, consumer: str, seq: int, keys: Iterable[str]) -> None:
    """Inside a commit's transaction: the rollouts of ``keys`` (the meta part is none) changed
    at ``seq`` (a listed rollout takes the newer position)."""
    rows = [(consumer, key, seq) for key in keys if key != META]
    if rows:
        await db.executemany("INSERT OR REPLACE INTO unmirrored (consumer, key, seq) VALUES (?, ?, ?)", rows)


async def listed(db: aiosqlite.Connection, consumer: str) -> list[str]:
    """The rollouts KV may not have, the longest waiting first (by the position of their last
    change, then by name)."""
    async with db.execute("SELECT key FROM unmirrored WHERE consumer = ? ORDER BY seq, key", (consumer,)) as cur:
        return [key async for (key,) in cur]


async def forget(db: aiosqlite.Connection, consumer: str, confirmed: Mapping[str, int]) -> None:
    """Remove each rollout of ``confirmed`` (rollout -> position its put value was made at)
    unless a later commit changed it; the caller holds a transaction."""
    await db.executemany("DELETE FROM unmirrored WHERE consumer = ? AND key = ? AND seq <= ?",
                         [(consumer, key, seq) for key, seq in confirmed.items()])
