"""``status`` in pages: 10,000 rollouts on a server of the test's own, listed through the
API and the CLI, every rollout exactly once, in name order, filtered by phase and prefix;
and a reply over the server's ``max_payload`` refused with a message saying what to do;
a listing asked before the API has read the rollouts from the log is refused (503) with
what to do, in the API and in ``rollout status``, and answered once it has.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.api.rollout_index import LiveIndex
from rollout_engine.engine.api.service import ControlApi, serve_api
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import ControlState, Metric, encode, subjects, transitions

N = 10_000
PHASE_OF_REMAINDER = {0: "idle", 1: "aborted", 2: "paused", 3: "promoted"}  # the rest: progressing


def _name(i: int) -> str:
    return f"app{i % 4}-r{i:05d}"


def _expected_phase(i: int) -> str:
    return PHASE_OF_REMAINDER.get(i % 10, "progressing")


def _message(i: int) -> tuple[str, bytes]:
    """One message that creates rollout ``i`` in the phase :func:`_expected_phase` says:
    a producer event only (idle, no command yet), or one control command."""
    rollout, base, when = _name(i), ControlState(), {"time_ms": 1_000 + i, "producer": "test", "actor": "ops"}
    kind = i % 10
    if kind == 0:
        event: Any = Metric(id=f"m{i}", rollout=rollout, time_ms=1_000 + i, producer="svc", variant="candidate",
                            name="latency_ms", value=10.0)
    elif kind == 1:
        event = transitions.kill_command(base, id=f"k{i}", rollout=rollout, reason="test", **when)
    elif kind == 2:
        event = transitions.config_command(base, id=f"p{i}", rollout=rollout, reason="test", canary_pct=10.0,
                                           paused=True, **when)
    else:
        event = transitions.config_command(base, id=f"c{i}", rollout=rollout, reason="test",
                                           canary_pct=100.0 if kind == 3 else 10.0, **when)
    return subjects.for_event(event), encode(event)


async def _fill(nc: Any, js: Any, n: int) -> None:
    """``n`` rollouts in batches of core publishes (the stream stores them; no ack per message)."""
    for start in range(0, n, 1000):
        for i in range(start, min(n, start + 1000)):
            await nc.publish(*_message(i))
        await nc.flush()
    async with asyncio.timeout(30):
        while (await js.stream_info(subjects.LOG_STREAM)).state.messages < n:
            await asyncio.sleep(0.05)


@pytest.fixture
async def served(stack):
    settings, nc, js = stack
    await _fill(nc, js, N)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_api(nc, stop, ready))
    await ready.wait()
    yield settings, nc, js
    stop.set()
    await task


async def _all_pages(nc: Any, **request: Any) -> tuple[list[dict[str, Any]], int]:
    rows, cursor, pages = [], None, 0
    while True:
        reply = await call(nc, "status", {**request, **({"cursor": cursor} if cursor else {})})
        rows += reply["rollouts"]
        pages += 1
        cursor = reply["next_cursor"]
        if cursor is None:
            return rows, pages


def _cli(settings: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url,
           "--data-dir", settings.data_dir, "status", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})


async def test_status_pages_list_every_rollout_once_in_order_with_filters(served) -> None:
    settings, nc, _js = served
    names = sorted(_name(i) for i in range(N))

    rows, pages = await _all_pages(nc, limit=1000)
    assert [r["rollout"] for r in rows] == names and pages == N // 1000
    phases = {r["rollout"]: r["phase"] for r in rows}
    assert phases == {_name(i): _expected_phase(i) for i in range(N)}
    assert all(r["control"]["kill_switch"] == (r["phase"] == "aborted") for r in rows)

    first = await call(nc, "status", {})
    assert len(first["rollouts"]) == 100 and first["next_cursor"] == names[99] and first["total"] == N
    assert first["phases"] == {"aborted": 1000, "paused": 1000, "promoted": 1000, "progressing": 6000, "idle": 1000}

    killed, _ = await _all_pages(nc, state="killed", limit=300)  # "killed" is the alias of aborted
    assert [r["rollout"] for r in killed] == sorted(_name(i) for i in range(N) if i % 10 == 1)
    promoted_app2, _ = await _all_pages(nc, state="promoted", prefix="app2-", limit=50)
    assert [r["rollout"] for r in promoted_app2] == sorted(_name(i) for i in range(N) if i % 10 == 3 and i % 4 == 2)
    prefixed, _ = await _all_pages(nc, prefix="app1-r0999")
    assert [r["rollout"] for r in prefixed] == [n for n in names if n.startswith("app1-r0999")]

    past = await call(nc, "status", {"cursor": names[-1]})
    assert past["rollouts"] == [] and past["next_cursor"] is None
    cases = [({"limit": 0}, "limit (--limit)"), ({"limit": 1001}, "limit (--limit)"), ({"limit": "5"}, "limit"),
             ({"cursor": "no such/cursor"}, "cursor (--cursor)"), ({"state": "sleeping"}, "state (--state)"),
             ({"prefix": "a b"}, "prefix (--prefix)"), ({"page": 2}, "unknown field")]
    for request, words in cases:
        with pytest.raises(ApiError) as refused:
            await call(nc, "status", request)
        assert refused.value.code == 400 and words in refused.value.message, (request, refused.value.message)

    # A rollout created now is on the next listing, whichever instance answers; a tick
    # stored after it (a subject neither of the index's consumers reads) changes nothing.
    await nc.publish(*_message(N))
    await nc.publish(subjects.TICK, b"not read by the index")
    await nc.flush()
    assert (await call(nc, "status", {"prefix": _name(N)}))["rollouts"][0]["rollout"] == _name(N)

    # The CLI: --all streams every page as JSON lines; a page says how to get the next one.
    done = await asyncio.to_thread(_cli, settings, "--all", "--json", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    listed = [row["rollout"] for line in done.stdout.splitlines() for row in json.loads(line)["rollouts"]]
    assert listed == sorted([*names, _name(N)])
    page = await asyncio.to_thread(_cli, settings, "--limit", "5", "--state", "paused", "--prefix", "app0-")
    assert page.returncode == 0, page.stderr
    paused_app0 = sorted(_name(i) for i in range(N) if i % 10 == 2 and i % 4 == 0)
    assert [line.split()[1].rstrip(":") for line in page.stdout.splitlines()
            if line.startswith("rollout ")] == paused_app0[:5]
    assert f"--cursor {paused_app0[4]}" in page.stdout
    as_json = json.loads((await asyncio.to_thread(_cli, settings, "--limit", "5", "--cursor", paused_app0[4],
                                                  "--state", "paused", "--prefix", "app0-", "--json")).stdout)
    assert [r["rollout"] for r in as_json["rollouts"]] == paused_app0[5:10]
    assert as_json["next_cursor"] == paused_app0[9]
    bad = await asyncio.to_thread(_cli, settings, "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr


async def test_a_reply_over_max_payload_is_refused_with_what_to_do(tmp_path) -> None:
    server = EmbeddedServer(tmp_path / "nats", port=0, max_payload=16 * 1024)
    server.start()
    try:
        settings = load_settings(env={}, nats_url=server.url, data_dir=str(tmp_path / "data"),
                                 max_payload_bytes=16 * 1024)
        nc = await connect(settings, name="test")
        js = nc.jetstream()
        await provision(js, settings)
        await _fill(nc, js, 400)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve_api(nc, stop, ready))
        await ready.wait()
        try:
            assert nc.max_payload == 16 * 1024
            with pytest.raises(ApiError) as refused:
                await call(nc, "status", {"limit": 400})
            message = refused.value.message
            assert refused.value.code == 413
            assert message.startswith("status: the reply is ") and "max_payload of 16,384 bytes" in message
            assert "--limit" in message and "--cursor" in message
            assert len((await call(nc, "status", {"limit": 50}))["rollouts"]) == 50  # a smaller page goes through
        finally:
            stop.set()
            await task
            await nc.close()
    finally:
        server.stop()


async def test_a_log_of_commands_only_is_listed(stack) -> None:
    """The events consumer then has nothing to deliver while the server reports it past
    the command (its delivered stream sequence counts skipped subjects): still caught up."""
    _settings, nc, _js = stack
    await nc.publish(*_message(1))  # a kill, no event
    await nc.publish(subjects.TICK, b"not read by the index")
    await nc.flush()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_api(nc, stop, ready))
    await ready.wait()
    try:
        reply = await call(nc, "status", {}, timeout=20)
        assert [(r["rollout"], r["phase"]) for r in reply["rollouts"]] == [(_name(1), "aborted")]
        assert reply["next_cursor"] is None and reply["total"] == 1
    finally:
        stop.set()
        await task


class _HeldIndex(LiveIndex):
    """The real index over the real log, whose first read starts only when ``go`` is set:
    an API that has not finished reading the rollouts yet, for as long as the test needs."""

    def __init__(self, js: Any) -> None:
        super().__init__(js)
        self.go = asyncio.Event()

    async def _start(self) -> None:
        await self.go.wait()
        await super()._start()


async def test_a_listing_before_the_index_is_read_is_503_with_what_to_do_then_answers(stack) -> None:
    settings, nc, _js = stack
    for i in range(3):
        await nc.publish(*_message(i))
    await nc.flush()
    api = ControlApi(nc)
    index = api.index = _HeldIndex(api.js)
    api.index_wait_s = 0.2  # how long a listing waits for the index before it answers 503
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_api(nc, stop, ready, api=api))
    await ready.wait()
    try:
        with pytest.raises(ApiError) as refused:
            await call(nc, "status", {"limit": 2})
        assert refused.value.code == 503
        message = refused.value.message
        assert "still reading the rollouts from the log" in message and "try again in a few seconds" in message
        assert "0 so far" in message, "it says how far the read got"

        text = await asyncio.to_thread(_cli, settings)  # the overview: streams, then why no rollouts are listed
        assert text.returncode == 0, text.stderr
        assert f"rollouts: not listed: {message}" in text.stdout.splitlines()
        paged = await asyncio.to_thread(_cli, settings, "--limit", "2")  # a page asked for: an error saying so
        assert paged.returncode == 2 and message in paged.stderr and "Traceback" not in paged.stderr

        index.go.set()
        reply = await call(nc, "status", {"limit": 2}, timeout=20)  # the same request, once the index is read
        assert [r["rollout"] for r in reply["rollouts"]] == sorted(_name(i) for i in range(3))[:2]
        assert reply["total"] == 3 and reply["next_cursor"] is not None
        text = await asyncio.to_thread(_cli, settings)
        assert "not listed" not in text.stdout and f"rollout {_name(0)}" in text.stdout
    finally:
        stop.set()
        await task
