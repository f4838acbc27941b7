"""A consumer far behind the stream: its lag is reported (``rollout status --json`` and the
engine's Prometheus exposition) and it catches up with bounded memory.

The consumer process is frozen with SIGSTOP (a stuck host, a long GC pause, a debugger)
while the log grows, then resumed. Memory: the runtime pulls ``--batch`` messages at a
time with at most ``max(4 x batch, 1000)`` unacknowledged, so its peak RSS must not grow
with the size of the backlog: a four times larger backlog adds at most ``RSS_SLACK``, plus
what the backlog's new event ids add to the consumer's seen set (``consumers.dedupe``),
which is bounded by its cap, not by the backlog: measured here on the same ids with
tracemalloc (at ``ROLLOUT_SOAK=3`` the set reaches its cap of 200,000 ids: 20 MiB more
than after the first 1,500 batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.metrics import LogMetrics
from rollout_engine.engine.stack.server import EmbeddedServer
from tests.integration.faultkit import (
    ROOT,
    SOAK,
    batch,
    clean_fold,
    committed,
    last_seq,
    publish,
    spawn,
    wait_for,
)

NAME = "canary_stats"
RSS_SLACK_KB = 24 * 1024


def seen_growth_kb(rollouts: Any, before: int, total: int, per_fetch: int = 64) -> int:
    """How much the seen set's peak memory grows from the ids of the first ``before``
    batches to those of the first ``total`` (recorded and flushed as the runtime does)."""
    seen = SeenIds(journal=True)  # as the runtime makes it: its writes are flushed each batch
    tracemalloc.start()
    try:
        at_before = 0
        for n in range(total):
            _subject, items = batch(n, rollouts(n), 20)
            seen.fresh(items, items[0].time_ms)
            if n % per_fetch == 0:
                seen.flush()
            if n + 1 == before:
                seen.flush()
                at_before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
        return (tracemalloc.get_traced_memory()[1] - at_before) // 1024
    finally:
        tracemalloc.stop()


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


async def status_lag(url: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "status", "--json",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    [log] = [s for s in json.loads(out)["streams"] if s["name"] == "RO_LOG"]
    [me] = [c for c in log["consumers"] if c["name"] == NAME]
    return int(me["lag"]) + int(me["ack_pending"])  # pulled but not folded counts as behind


@pytest.mark.slow
@pytest.mark.timeout(120 * SOAK)
async def test_a_consumer_far_behind_reports_lag_and_catches_up_in_bounded_memory(
    fresh_server: EmbeddedServer, stack: tuple[Settings, Any, Any]
) -> None:
    settings, _nc, js = stack  # own server, provisioned; closed by the fixture
    data_dir = Path(settings.data_dir)
    rollouts = lambda n: f"slow-{n % 4}"  # noqa: E731
    published = await publish(js, 0, 500, rollouts)
    proc = await spawn(fresh_server.url, data_dir, NAME, "--batch", "64")
    try:
        await wait_for(lambda: committed(data_dir, NAME) == 500, 30, "the first backlog")
        peaks = [peak_rss_kb(proc.pid)]
        first = 500
        for backlog in (1000, 4000 * SOAK):
            proc.send_signal(signal.SIGSTOP)
            published += await publish(js, first, backlog, rollouts)
            first += backlog
            # The lag is visible from outside while the consumer is stuck.
            assert await status_lag(fresh_server.url) >= backlog
            exporter = LogMetrics()
            await exporter.refresh(js)
            behind = sum(s.value for m in exporter.collect() for s in m.samples if s.labels.get("consumer") == NAME
                         and s.name in ("rollout_consumer_lag_messages", "rollout_consumer_ack_pending_messages"))
            assert behind >= backlog
            proc.send_signal(signal.SIGCONT)
            await wait_for(lambda end=first: committed(data_dir, NAME) == end, 60, f"catching up {backlog} messages")
            peaks.append(peak_rss_kb(proc.pid))
        assert await status_lag(fresh_server.url) == 0
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

    last = await last_seq(js)
    expected, events = await clean_fold(js, NAME, settings, last)
    out = await spawn(fresh_server.url, data_dir, NAME, "--digest", "--json")
    stored = json.loads((await out.communicate())[0])
    assert stored == {"consumer": NAME, "seq": last, "digest": expected}
    assert events == published
    seen_kb = seen_growth_kb(rollouts, 1500, last)
    print(f"peak RSS after backlogs of 500, +1000, +{4000 * SOAK} messages: {[p // 1024 for p in peaks]} MiB; "
          f"the seen set grew {seen_kb // 1024} MiB")
    assert peaks[2] - peaks[1] <= RSS_SLACK_KB + seen_kb, f"peak RSS grew with the backlog: {peaks} KiB"
