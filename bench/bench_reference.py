"""Reference figures measured beside ours in the same run (issue 9).

- transport ceiling: raw nats-py pull fetch + msgspec decode of the stream, no projection, no acks;
- naive design: one JetStream message per event, one ack per event, one SQLite commit per event;
- peer: the same workload on the ``eventsourcing`` library with its SQLite backend
  (an application recording the events, 100 per save, and a projection following its
  notification log in pages, folding the same reducer and committing a tracking row per page).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.harness import bench_server, timed
from bench.workload import make_batches, publish_batches
from events import AnyEvent, decode_message, encode, subjects

__all__ = ["eventsourcing_peer", "naive_design", "transport_ceiling"]


def _projection() -> Any:
    """The canary-stats reducer when it exists; the benchmark compares like with like."""
    from consumers.canary_stats import CanaryStats

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
        db = sqlite3.connect(os.path.join(settings.data_dir, "naive.db")) if os.makedirs(settings.data_dir, exist_ok=True) is None else None
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
    from events import kind_of

    return kind_of(event)


def eventsourcing_peer(total: int = 100_000) -> dict[str, float]:
    """Record with eventsourcing (100 events per save), then project its notification log."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class RolloutLog(Aggregate):
        @event("Observed")
        def observe(self, data: dict) -> None:  # the event is the record; no aggregate state
            pass

    with tempfile.TemporaryDirectory(prefix="rollout-bench-es-") as tmp:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{tmp}/es.db", "IS_SNAPSHOTTING_ENABLED": "n"}
        app = Application(env=env)
        batches = list(make_batches(total))
        with timed() as write_elapsed:
            for _, _, batch in batches:
                log = RolloutLog()
                for item in batch:
                    log.observe(data=msgspec.to_builtins(item))
                app.save(log)
        write_rate = total / write_elapsed()

        projection = _projection()
        tracking = sqlite3.connect(f"{tmp}/tracking.db")
        tracking.execute("CREATE TABLE tracking (name TEXT, notification_id INTEGER, PRIMARY KEY (name, notification_id))")
        decoder = msgspec.convert
        from events import AnyEvent as Union

        seen = 0
        start = 1
        with timed() as read_elapsed:
            while True:
                page = app.recorder.select_notifications(start, 1000)
                if not page:
                    break
                for notification in page:
                    domain_event = app.mapper.to_domain_event(notification)
                    data = getattr(domain_event, "data", None)
                    if data is None:
                        continue  # the aggregate's Created event
                    projection.apply(decoder(data, Union), notification.id)
                    seen += 1
                tracking.execute("INSERT INTO tracking VALUES (?, ?)", ("peer", page[-1].id))
                tracking.commit()
                start = page[-1].id + 1
        tracking.close()
        return {"write_events_per_s": write_rate, "project_events_per_s": seen / read_elapsed(), "projected": seen}


if __name__ == "__main__":  # quick look: python -m bench.bench_reference
    print("ceiling", asyncio.run(transport_ceiling(100_000)))
