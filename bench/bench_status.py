"""``status`` at 100,000 rollouts (``make bench``, group ``status``).

A fresh server is filled with 100,000 rollouts (one control command each, or one
producer event for every tenth: those stay idle with no command), the operator API is
served in this process on its own connection, and a client connection asks:

* the index build: from the API's start until its index holds every rollout (two
  ordered consumers delivering the last message per subject: engine/api/rollout_index.py);
* the first page (100 rollouts, what ``rollout status`` shows), a filtered page
  (``--state aborted``), a page from a cursor in the middle, and the largest page
  (1,000); each the median of 20 requests, with its reply size;
* the whole ``rollout status`` command as a process (Python start-up included), beside
  the same command against a log with no rollout;
* the alternative of listing KV ``ro_state`` keys with nats-py's ``keys()`` at each
  request (100,000 keys), and the cost the index pays live: event messages it follows
  per second (headers only) while a publisher in this process sends them;
* the reference, measured in the same run: the listing as it was before (one
  ``STREAM.INFO`` of every subject, then four last-message look-ups per rollout), on
  10,000 rollouts since at 100,000 it takes minutes.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import Figure, bench_server
from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.api.control_log import known_rollouts, read_control
from rollout_engine.engine.api.service import serve_api
from rollout_engine.engine.bus import connect
from rollout_engine.events import ControlState, Metric, encode, subjects, transitions

__all__ = ["fill", "status_figures"]

ROOT = Path(__file__).resolve().parents[1]
ROLLOUTS = 100_000
BEFORE_ROLLOUTS = 10_000
REQUESTS = 20


def _message(i: int) -> tuple[str, bytes]:
    """Rollout ``i``: a producer event (every tenth, idle), else one command (a kill, a pause or a canary step)."""
    rollout, base = f"svc{i % 50:02d}-r{i:06d}", ControlState()
    when = {"time_ms": 1_000 + i, "producer": "bench", "actor": "ops", "reason": "bench"}
    kind = i % 10
    if kind == 0:
        event: Any = Metric(id=f"m{i}", rollout=rollout, time_ms=1_000 + i, producer="svc", variant="candidate",
                            name="latency_ms", value=10.0)
    elif kind == 1:
        event = transitions.kill_command(base, id=f"k{i}", rollout=rollout, **when)
    else:
        event = transitions.config_command(base, id=f"c{i}", rollout=rollout, canary_pct=10.0 * (kind - 1),
                                           paused=kind == 2, **when)
    return subjects.for_event(event), encode(event)


async def fill(nc: Any, js: Any, n: int) -> None:
    """``n`` rollouts through core publishes in batches of 2,000 (the stream stores them)."""
    for start in range(0, n, 2_000):
        for i in range(start, min(n, start + 2_000)):
            await nc.publish(*_message(i))
        await nc.flush()
    while (await js.stream_info(subjects.LOG_STREAM)).state.messages < n:
        await asyncio.sleep(0.1)


async def _median_ms(nc: Any, request: dict[str, Any]) -> tuple[list[float], int]:
    runs, size = [], 0
    for _ in range(REQUESTS):
        started = time.perf_counter()
        reply = await call(nc, "status", request, timeout=30)
        runs.append((time.perf_counter() - started) * 1000)
        size = len(msgspec.json.encode(reply))
    return runs, size


def _figure(name: str, unit: str, runs: list[float], **meta: Any) -> Figure:
    return Figure(name, unit, statistics.median(runs), min(runs), max(runs), runs, **meta)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _before(n: int) -> float:
    """Seconds of the listing as it was: every subject with its count, then each rollout's state."""
    async with bench_server() as (_server, _settings, nc, js):
        await fill(nc, js, n)
        started = time.perf_counter()
        gate = asyncio.Semaphore(32)

        async def one(name: str) -> None:
            async with gate:
                await read_control(js, name)

        await asyncio.gather(*(one(name) for name in await known_rollouts(js)))
        return time.perf_counter() - started


async def _cli_ms(settings: Any, runs: int = 5) -> list[float]:
    """Wall time of the ``rollout status`` process, start-up included."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url,
                             "--data-dir", settings.data_dir, "status"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append((time.perf_counter() - started) * 1000)
        assert done.returncode == 0, done.stderr
    return times


async def _cli_empty_ms() -> float:
    """The same command against a log with no rollout and the API serving: the process's own cost."""
    async with bench_server() as (_server, settings, _nc, _js):
        api_nc = await connect(settings, name="bench-api")
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_api(api_nc, stop, ready))
        await ready.wait()
        try:
            return statistics.median(await _cli_ms(settings))
        finally:
            stop.set()
            await task
            await api_nc.close()


async def _kv_keys_s(n: int) -> float:
    """The alternative: list ``n`` keys of ``ro_state`` with nats-py's ``keys()`` (an ordered
    consumer, headers only, last per subject), as a request would have to each time."""
    async with bench_server() as (_server, _settings, nc, js):
        for start in range(0, n, 2_000):
            for i in range(start, min(n, start + 2_000)):
                await nc.publish(subjects.kv_subject(subjects.kv_key("control", f"r{i:06d}")), b"\x80")
            await nc.flush()
        while (await js.stream_info(subjects.KV_STREAM)).state.messages < n:
            await asyncio.sleep(0.1)
        kv = await js.key_value(subjects.STATE_BUCKET)
        started = time.perf_counter()
        keys = await kv.keys()
        assert len(keys) == n, len(keys)
        return time.perf_counter() - started


async def _live_events_per_s(client: Any, n: int = 100_000) -> float:
    """Event messages the API's index follows per second while they are published
    (``ro.evt.>``, headers only), measured until a status request finds them all folded."""
    started = time.perf_counter()
    for start in range(0, n, 2_000):
        for i in range(start, min(n, start + 2_000)):
            await client.publish(f"ro.evt.svc{i % 50:02d}-r{i:06d}.metric", b"x")
        await client.flush()
    await call(client, "status", {"limit": 1}, timeout=60)
    return n / (time.perf_counter() - started)


async def status_figures() -> list[Figure]:
    """The figures of the module docstring."""
    before = await _before(BEFORE_ROLLOUTS)
    empty_cli = await _cli_empty_ms()
    kv_keys = await _kv_keys_s(ROLLOUTS)
    async with bench_server() as (_server, settings, client, js):
        await fill(client, js, ROLLOUTS)
        api_nc = await connect(settings, name="bench-api")
        stop, ready = asyncio.Event(), asyncio.Event()
        rss = _rss_mb()
        started = time.perf_counter()
        task = asyncio.create_task(serve_api(api_nc, stop, ready))
        await ready.wait()
        while True:  # the service answers 503 while it reads the log at its start
            try:
                first = await call(client, "status", {}, timeout=60)
                break
            except ApiError as exc:
                if exc.code != 503:
                    raise
        build = time.perf_counter() - started
        grown = _rss_mb() - rss
        assert first["total"] == ROLLOUTS, first["total"]
        try:
            page, page_size = await _median_ms(client, {})
            killed, killed_size = await _median_ms(client, {"state": "aborted"})
            middle, _ = await _median_ms(client, {"cursor": "svc25-r000000"})
            largest, largest_size = await _median_ms(client, {"limit": 1000})
            cli = await _cli_ms(settings)
            live = await _live_events_per_s(client)
        finally:
            stop.set()
            await task
            await api_nc.close()
    ref = {"reference": f"before: whole listing, {BEFORE_ROLLOUTS:,} rollouts", "reference_value": before * 1000}
    return [
        _figure(f"status: API index built at start, {ROLLOUTS:,} rollouts", "s", [build],
                note=f"API process memory grew {grown:.0f} MB"),
        _figure(f"status: first page (100) of {ROLLOUTS:,} rollouts", "ms", page, target="< 200", **ref,
                note=f"reply {page_size:,} bytes"),
        _figure("status: page of --state aborted (100)", "ms", killed, note=f"reply {killed_size:,} bytes"),
        _figure("status: page from a cursor mid-list (100)", "ms", middle),
        _figure(f"alternative: KV keys() of {ROLLOUTS:,} rollouts, per request", "ms", [kv_keys * 1000]),
        _figure("index: event messages followed live (publisher in the same process)", "msgs/s", [live]),
        _figure("status: largest page (1,000)", "ms", largest, note=f"reply {largest_size:,} bytes"),
        _figure(f"`rollout status` process (start-up + health + first page), {ROLLOUTS:,} rollouts", "ms", cli,
                reference="the same process, no rollout", reference_value=empty_cli),
    ]
