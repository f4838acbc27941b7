"""The notifier against a real nats-server and a local HTTP endpoint that fails, then recovers.

Exactly one delivery per command and webhook across an endpoint outage and a SIGKILL of
the notifier process; a webhook that never recovers ends in the dead letters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from rollout_engine.consumers import registry
from rollout_engine.consumers.deadletter import decode_dead_letter
from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.api.control_log import read_messages
from rollout_engine.engine.settings import Webhook
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import (
    ControlState,
    Escalation,
    KillSwitch,
    Notification,
    Resume,
    encode,
    subjects,
)
from rollout_engine.events.ids import new_event_id

ON, OFF = ControlState(kill_switch=True), ControlState(canary_pct=5.0)


class Endpoint:
    """An HTTP server answering 503 while ``down`` (and always on /broken), else 200; it
    records every request."""

    def __init__(self) -> None:
        self.down = True
        self.requests: list[tuple[str, int, dict[str, str], dict]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = 503 if endpoint.down or self.path == "/broken" else 200
                endpoint.requests.append((self.path, code, dict(self.headers), body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def served(self, path: str, code: int) -> list[tuple[dict[str, str], dict]]:
        return [(h, b) for p, c, h, b in list(self.requests) if p == path and c == code]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    thread = threading.Thread(target=ep.server.serve_forever, daemon=True)
    thread.start()
    yield ep
    ep.server.shutdown()


async def _until(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _command(js, event) -> None:
    kind = type(event).__struct_config__.tag
    await js.publish(subjects.control(event.rollout, kind), encode(event), headers={"Nats-Msg-Id": event.id})


def _kill(rollout: str) -> KillSwitch:
    return KillSwitch(id=new_event_id(), rollout=rollout, time_ms=int(time.time() * 1000), producer="rollback",
                      actor="rollback", reason="latency (candidate p95: 1850ms > 1600ms)", before=OFF, after=ON)


async def _records(js, rollout: str) -> list[Notification]:
    out = []
    async for msg in read_messages(js, [subjects.control(rollout, "notification")]):
        out.extend(e for e in events_of(msg) if isinstance(e, Notification))
    return out


async def test_one_delivery_per_command_across_an_outage_and_a_sigkill(stack, endpoint, tmp_path) -> None:
    settings, _nc, js = stack
    rollout = "checkout-v2"
    hooks = [{"name": "oncall", "url": f"{endpoint.url}/json"},
             {"name": "chat", "url": f"{endpoint.url}/slack", "format": "slack"}]
    env = {**os.environ, "ROLLOUT_WEBHOOKS": json.dumps(hooks), "ROLLOUT_NOTIFY_BACKOFF_S": "0.1",
           "ROLLOUT_NOTIFY_BACKOFF_MAX_S": "0.3", "ROLLOUT_NOTIFY_MAX_ATTEMPTS": "100"}
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir",
           settings.data_dir, "consumer", "notifier"]

    def start() -> asyncio.Future:
        return asyncio.ensure_future(asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                                    stderr=asyncio.subprocess.DEVNULL))

    commands = [_kill(rollout)]
    await _command(js, commands[0])
    notifier = await start()
    try:
        await _until(lambda: len(endpoint.served("/json", 503)) >= 2 and len(endpoint.served("/slack", 503)) >= 2,
                     what="failed attempts while the endpoint is down")
        notifier.send_signal(signal.SIGKILL)  # no 2xx can be in flight: the endpoint is down
        await notifier.wait()
        failed_before = len(endpoint.served("/json", 503))
        commands.append(Resume(id=new_event_id(), rollout=rollout, time_ms=int(time.time() * 1000), producer="api",
                               actor="alice", reason="fix deployed", before=ON, after=OFF, action="retry"))
        commands.append(Escalation(id=new_event_id(), rollout=rollout, time_ms=int(time.time() * 1000),
                                   producer="rollback", actor="rollback", reason="quality breached 3 times within 24h",
                                   trigger="quality", count=3))
        for command in commands[1:]:
            await _command(js, command)
        notifier = await start()
        await _until(lambda: len(endpoint.served("/json", 503)) > failed_before, what="retries after the restart")
        endpoint.down = False
        await _until(lambda: len(endpoint.served("/json", 200)) >= 3 and len(endpoint.served("/slack", 200)) >= 3,
                     what="deliveries after the endpoint recovered")
        # One more command: each webhook delivers in log order, so a repeat of an earlier
        # one would arrive before it.
        commands.append(_kill(rollout))
        await _command(js, commands[-1])
        await _until(lambda: len(endpoint.served("/json", 200)) >= 4 and len(endpoint.served("/slack", 200)) >= 4,
                     what="the last command's deliveries")
    finally:
        notifier.send_signal(signal.SIGTERM)
        await asyncio.wait_for(notifier.wait(), 30)

    generic, slack = endpoint.served("/json", 200), endpoint.served("/slack", 200)
    assert [body["event"]["id"] for _h, body in generic] == [c.id for c in commands]
    assert [body["kind"] for _h, body in generic] == ["kill_switch", "resume", "escalation", "kill_switch"]
    assert len({h["X-Rollout-Delivery-Id"] for h, _b in generic + slack}) == 8
    assert all(h["Idempotency-Key"] == h["X-Rollout-Delivery-Id"] for h, _b in generic + slack)
    assert generic[0][1]["text"].startswith("Kill switch on checkout-v2: killed by the rollback consumer")
    assert slack[1][1] == {"text": ":white_check_mark: checkout-v2 retried from the first step at 5% by alice: fix deployed"}
    records = await _records(js, rollout)
    delivered = [(r.command_id, r.target) for r in records if r.status == "delivered"]
    assert sorted(delivered) == sorted((c.id, t) for c in commands for t in ("oncall", "chat"))
    first = [r for r in records if r.command_id == commands[0].id and r.target == "oncall"]
    attempts = [r.attempt for r in first]
    assert attempts == list(range(1, len(attempts) + 1)), "attempts count on across the restart"
    assert len(attempts) > failed_before >= 2 and first[-1].status == "delivered"


async def test_a_webhook_that_stays_down_ends_in_the_dead_letters(stack, endpoint) -> None:
    settings, nc, js = stack
    endpoint.down = False
    settings = msgspec.structs.replace(settings, notify_max_attempts=2, notify_backoff_s=0.05,
                                       webhooks=[Webhook(name="broken", url=f"{endpoint.url}/broken"),
                                                 Webhook(name="ok", url=f"{endpoint.url}/ok", events=["resume"])])
    kill = _kill("search-v3")
    await _command(js, kill)
    runner = consumer_runner(registry.build("notifier", settings), settings, nc=nc)
    task = asyncio.create_task(runner.run())
    try:
        dead = await js.subscribe(subjects.dlq("notifier"), stream=subjects.DLQ_STREAM, ordered_consumer=True)
        msg = await dead.next_msg(timeout=30)
    finally:
        runner.stop()
        await task
    letter = decode_dead_letter(msg.data)
    assert letter.field == "webhook" and letter.subject == subjects.control("search-v3", "kill_switch")
    assert "webhook broken: 2 attempts failed, the last with HTTP 503" in letter.reason
    assert letter.data == encode(kill)
    assert len(endpoint.served("/broken", 503)) == 2 and endpoint.served("/ok", 200) == []  # ok takes resumes only
    records = await _records(js, "search-v3")
    assert [(r.target, r.status, r.attempt) for r in records] == [("broken", "failed", 1), ("broken", "dead", 2)]
