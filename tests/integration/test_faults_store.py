"""The SQLite store locked, read-only or full: the consumer stops taking events, says why
(log + metric), acks nothing it did not commit, and resumes cleanly when the fault clears.

How each fault is made (we run as whatever user the machine gives us, often root, and
there is no tmpfs to fill):

- **locked**: a second connection holds ``BEGIN EXCLUSIVE`` on the store file, as a
  stray ``sqlite3`` shell or a backup tool would; the runtime's commit meets SQLITE_BUSY
  after SQLite's 5 s busy timeout.
- **read-only**: ``PRAGMA query_only`` on the runtime's own connection, which makes
  SQLite answer every write with SQLITE_READONLY, the code it returns for a file or
  mount that turned read-only (file modes cannot be used: root ignores them).
- **disk full**: ``PRAGMA max_page_count`` set to the current size on the runtime's
  connection; SQLite then answers a growing commit with SQLITE_FULL, the same code and
  the same automatic rollback as ENOSPC.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rollout_engine.consumers.runtime import Runner
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.consumer_metrics import ConsumerMetrics
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import subjects
from tests.integration.faultkit import (
    SOAK,
    build,
    clean_fold,
    committed,
    last_seq,
    publish,
    wait_for,
)

NAME = "canary_stats"


async def _inject(fault: str, runner: Runner, path: Path) -> sqlite3.Connection | None:
    db = runner.store.db
    if fault == "disk_full":
        async with db.execute("PRAGMA page_count") as cur:
            pages = (await cur.fetchone())[0]
        await db.execute(f"PRAGMA max_page_count={int(pages)}")
        return None
    if fault == "read_only":
        await db.execute("PRAGMA query_only=ON")
        return None
    holder = sqlite3.connect(path, isolation_level=None, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


async def _clear(fault: str, runner: Runner, holder: sqlite3.Connection | None) -> None:
    if fault == "disk_full":
        await runner.store.db.execute("PRAGMA max_page_count=1073741823")
    elif fault == "read_only":
        await runner.store.db.execute("PRAGMA query_only=OFF")
    else:
        assert holder is not None
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", ["disk_full", "read_only", "locked"] * SOAK)
async def test_store_fault_stalls_without_acking_then_resumes_with_nothing_lost(
    fault: str, fresh_server: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"), consumer_batch=8)
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    published = await publish(js, 0, 60, lambda n: f"before-{n % 3}")

    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    runner = consumer_runner(build(NAME, settings), settings, metrics=metrics, fetch_timeout=0.2)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: committed(settings.data_dir, NAME) == 60, 20, "the backlog to be committed")

    def sample(metric: str, **labels: str) -> float:
        return registry.get_sample_value(metric, {"consumer": NAME, **labels}) or 0.0

    caplog.set_level(logging.ERROR, logger="rollout_engine.consumers.runtime")
    holder = await _inject(fault, runner, runner.store.path)
    try:
        # New rollouts: new snapshot parts, so a commit must grow the file.
        published += await publish(js, 60, 60, lambda n: f"after-{n}")
        await wait_for(lambda: sample("rollout_consumer_stalled") == 1, 30, "the consumer to stall")
        await wait_for(lambda: sample("rollout_consumer_store_errors_total", reason=fault) >= 2, 30, "a retry")
        assert committed(settings.data_dir, NAME) == 60, "nothing may be committed while the store refuses"
        info = await js.consumer_info(subjects.LOG_STREAM, NAME)
        assert info.ack_floor.stream_seq <= 60, "a message was acked that was never committed"
        assert any(fault in r.getMessage() and "refused the commit" in r.getMessage() for r in caplog.records)
    finally:
        await _clear(fault, runner, holder)

    last = await last_seq(js)
    await wait_for(lambda: committed(settings.data_dir, NAME) == last, 30, "the consumer to resume")
    assert sample("rollout_consumer_stalled") == 0
    runner.stop()
    summary = await asyncio.wait_for(task, 20)
    expected, events = await clean_fold(js, NAME, settings, last)
    await nc.close()
    assert last == 120 and summary.seq == last
    assert summary.digest == expected
    assert events == summary.events == published == 2400  # folded once each: none lost, none doubled
