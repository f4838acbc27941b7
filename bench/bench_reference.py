"""Reference figures measured beside ours in the same run (the ceiling, the naive design, the peer).

- transport ceiling: raw nats-py pull fetch + msgspec decode of the stream, no projection, no acks;
- naive design: one JetStream message per event, one ack per event, one SQLite commit per event;
- peer: see ``bench.peer_eventsourcing``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.harness import bench_server, timed
from bench.workload import make_batches, publish_batches
from rollout_engine.events import AnyEvent, decode_message, encode, subjects

__all__ = ["naive_design", "transport_ceiling"]


def _projection() -> Any:
    """The canary-stats reducer when it exists; the benchmark compares like with like."""
    from rollout_engine.consumers.canary_stats import CanaryStats

    return CanaryStats()


async def drain_raw(js: Any, total: int, durable: str, batch: int = 256) -> float:
    """Fetch and decode ``total`` events with no projection and no acks; return events/s."""
    sub = await js.pull_subscribe(
        subjects.EVENTS_ALL, durable=durable, stream=subjects.LOG_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1),
    )
    seen = 0
    with timed() as elapsed:
        while seen < total:
            try:
                msgs = await sub.fetch(batch, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                seen += len(decode_message(msg.data))
    await sub.unsubscribe()
    return seen / elapsed()


async def transport_ceiling(total: int = 200_000) -> float:
    async with bench_server() as (_, _, _, js):
        await publish_batches(js, list(make_batches(total)))
        return await drain_raw(js, total, "ceiling")


async def naive_design(total: int = 20_000) -> float:
    """Per event: one message, one fold, one SQLite commit, one ack."""
    async with bench_server() as (_, settings, _, js):
        events = [e for _, _, batch in make_batches(total) for e in batch]
        for event in events:
            await js.publish_async(subjects.event(event.rollout, _kind(event)), encode(event),
                                   headers={"Nats-Msg-Id": event.id})
        await js.publish_async_completed()
        projection = _projection()
        os.makedirs(settings.data_dir, exist_ok=True)
        db = sqlite3.connect(os.path.join(settings.data_dir, "naive.db"))
        db.execute("CREATE TABLE state (name TEXT PRIMARY KEY, seq INTEGER, snapshot BLOB)")
        sub = await js.pull_subscribe(subjects.EVENTS_ALL, durable="naive", stream=subjects.LOG_STREAM)
        seen = 0
        with timed() as elapsed:
            while seen < total:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    continue
                for msg in msgs:
                    for event in decode_message(msg.data):
                        projection.apply(event, msg.metadata.sequence.stream)
                        seen += 1
                    db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                               ("naive", msg.metadata.sequence.stream, b""))
                    db.commit()
                    await msg.ack()
        db.close()
        return seen / elapsed()


def _kind(event: AnyEvent) -> str:
    from rollout_engine.events import kind_of

    return kind_of(event)


if __name__ == "__main__":  # quick look: python -m bench.bench_reference
    print("ceiling", asyncio.run(transport_ceiling(100_000)))
