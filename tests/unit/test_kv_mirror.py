"""The KV mirror's pacing: a value committed within the interval reaches KV by a timer,
without waiting for another commit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from rollout_engine.consumers.mirror import KvMirror


class _Kv:
    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes]] = []

    async def put(self, key: str, value: bytes) -> None:
        self.puts.append((key, value))


async def test_a_value_committed_within_the_interval_is_put_when_the_interval_ends() -> None:
    kv = _Kv()

    async def get_kv() -> Any:
        return kv

    runner: Any = SimpleNamespace(kv=get_kv, nc=None)
    mirror = KvMirror("rollback", lambda rollout: rollout.encode(), lambda: [], interval_s=0.5)
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
