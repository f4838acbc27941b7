"""The KV mirror: its pacing (a value committed within the interval reaches KV by a timer,
without waiting for another commit) and what a restart puts (the rollouts its store lists,
consumers/unmirrored.py), with a store of its own: commits, confirmations, older stores.
Resting rollouts' values are checked in tests/unit/test_resident.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.projection import META
from rollout_engine.consumers.store import SQLiteConsumerStore


class _Store:
    def __init__(self) -> None:
        self.confirmed: dict[str, int] = {}

    async def confirm_mirrored(self, confirmed: dict[str, int]) -> None:
        self.confirmed.update(confirmed)


class _Kv:
    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes]] = []

    async def put(self, key: str, value: bytes) -> None:
        self.puts.append((key, value))


async def test_a_value_committed_within_the_interval_is_put_when_the_interval_ends() -> None:
    kv = _Kv()

    async def get_kv() -> Any:
        return kv

    store = _Store()
    runner: Any = SimpleNamespace(kv=get_kv, nc=None, store=store, folder=SimpleNamespace(seq=7), name="rollback")
    mirror = KvMirror("rollback", lambda rollout: rollout.encode(), interval_s=0.5)
    await mirror.after_commit(runner, SimpleNamespace(parts=["a"]))
    await mirror.after_commit(runner, SimpleNamespace(parts=["b"]))  # within the interval: no round yet
    await asyncio.sleep(0.01)
    assert kv.puts == [("rollback.a", b"a")]
    for _ in range(100):  # no further commit: the timer starts the next round
        if len(kv.puts) == 2:
            break
        await asyncio.sleep(0.05)
    assert kv.puts == [("rollback.a", b"a"), ("rollback.b", b"b")]
    await mirror.on_stop(runner)
    assert store.confirmed == {"a": 7, "b": 7}, "what was put is taken off the store's list"



async def _commit(store: SQLiteConsumerStore, seq: int, *keys: str) -> None:
    await store.commit(seq, {key: f"{key}@{seq}".encode() for key in keys})


async def test_a_commit_lists_what_it_changed_and_a_confirmation_takes_off_only_what_is_as_recent(tmp_path: Path) -> None:
    async with SQLiteConsumerStore(tmp_path / "c.sqlite", "c", mirrored=True) as store:
        await _commit(store, 1, "b", "a", META)
        await _commit(store, 2, "c", "b")
        assert await store.unmirrored_rollouts() == ["a", "b", "c"], "longest waiting first; the meta part is no rollout"
        await _commit(store, 3, "a")  # changed after the value put below was made
        await store.confirm_mirrored({"a": 2, "b": 2, "zz": 2})
        assert await store.unmirrored_rollouts() == ["c", "a"], "a changed at 3 after its value made at 2: listed"
        await store.confirm_mirrored({"a": 3})
        assert await store.unmirrored_rollouts() == ["c"]


async def test_a_store_older_than_the_list_lists_every_rollout_once(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    async with SQLiteConsumerStore(path, "c") as old:  # no mirror: no list (as a store of an older version)
        await _commit(old, 1, "b", "a", META)
        assert await old.unmirrored_rollouts() == []
    with sqlite3.connect(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'unmirrored'").fetchall()
    async with SQLiteConsumerStore(path, "c", mirrored=True) as store:
        assert await store.unmirrored_rollouts() == ["a", "b"]
        await store.confirm_mirrored({"a": 1, "b": 1})
    async with SQLiteConsumerStore(path, "c", mirrored=True) as store:
        assert await store.unmirrored_rollouts() == [], "listed once, not at every open"


async def test_a_restart_puts_exactly_the_listed_rollouts(tmp_path: Path) -> None:
    kv = _Kv()

    async def get_kv() -> Any:
        return kv

    async with SQLiteConsumerStore(tmp_path / "c.sqlite", "c", mirrored=True) as store:
        await _commit(store, 4, "a", "b", "c")
        await store.confirm_mirrored({"a": 4, "c": 4})
        runner: Any = SimpleNamespace(kv=get_kv, nc=None, store=store, folder=SimpleNamespace(seq=4), name="c")
        mirror = KvMirror("rollback", lambda rollout: rollout.encode(), interval_s=0.0)
        await mirror.on_start(runner)
        await mirror.on_stop(runner)
        assert kv.puts == [("rollback.b", b"b")]
        assert mirror.puts == 1 and await store.unmirrored_rollouts() == []
