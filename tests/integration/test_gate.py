"""The deployment gate against a real stack, called the way Argo Rollouts' web metric provider
and Flagger's webhooks call it (method, headers and body as their docs show): advance for a
healthy rollout, halt for a killed or breaching one, inconclusive without evidence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, policy_change, runs
from rollout_engine.engine.api.gate import Gate, start_gate
from rollout_engine.engine.settings import SettingsError, load_settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import KillSwitch
from tests.integration.test_canary_sim import Rig, make_rig

TOKEN = "s3cret-gate-token"


@pytest.fixture
async def gated(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[tuple[Rig, int]]:
    """A stack with the rollback and control consumers, and the gate on a free loopback port."""
    async with make_rig(fresh_server, tmp_path / "data") as rig:
        gate = Gate(rig.js, token=TOKEN, rate_per_s=1000, burst=1000)
        port = await gate.start("127.0.0.1", 0)
        try:
            yield rig, port
        finally:
            await gate.close()


async def http(port: int, method: str, path: str, headers: dict[str, str] | None = None,
               body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 exchange as Go's net/http client makes it (Host, User-Agent, Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "User-Agent: Go-http-client/1.1",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body or method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    head_part, _, payload = rest.partition(b"\r\n\r\n")
    response_headers = dict(line.split(": ", 1) for line in head_part.decode().split("\r\n") if line)
    return int(status_line.split()[1]), response_headers, json.loads(payload) if payload else None


async def argo(port: int, rollout: str) -> tuple[int, Any]:
    """Argo Rollouts' web provider: GET with the AnalysisTemplate's headers, then jsonPath {$.verdict}."""
    status, _, body = await http(port, "GET", f"/v1/rollouts/{rollout}/verdict",
                                 {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"})
    return status, body


async def flagger(port: int, route: str, rollout: str, phase: str = "Progressing",
                  token: str = TOKEN) -> tuple[int, Any]:
    """Flagger's webhook call: POST, Content-Type application/json, its payload with our metadata."""
    payload = {"name": "podinfo", "namespace": "test", "phase": phase, "checksum": "6d8f7c9b",
               "metadata": {"rollout": rollout, "token": token}}
    status, _, body = await http(port, "POST", f"/v1/flagger/{route}", {"Content-Type": "application/json"},
                                 json.dumps(payload).encode())
    return status, body


async def until(port: int, rollout: str, verdict: str, timeout: float = 10.0) -> Any:
    """Poll like Argo's interval does, until the engine's published evaluation says ``verdict``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await argo(port, rollout)
        if status == 200 and body["verdict"] == verdict:
            return body
        assert loop.time() < deadline, f"verdict stayed {body}"
        await asyncio.sleep(0.2)


async def test_healthy_rollout_advances_and_a_regressing_one_is_halted(gated) -> None:
    rig, port = gated
    await rig.publish([policy_change("good", None, canary_pct=20)])
    status, body = await argo(port, "good")
    assert (status, body["verdict"]) == (200, "inconclusive")  # configured, no evidence yet
    assert (await flagger(port, "check", "good"))[0] == 200  # missing data never fails a Flagger check
    assert (await flagger(port, "gate", "good"))[0] == 409  # but a confirmation gate waits for it

    await rig.publish(runs("good", 400, canary_pct=20))
    body = await until(port, "good", "advance")
    assert body["healthy"] is True and body["kill_switch"] is False and body["guards"]
    for route, expected in (("check", 200), ("gate", 200), ("rollback", 409)):
        assert (await flagger(port, route, "good"))[0] == expected, route

    await rig.publish(runs("bad", 200, canary_pct=50, candidate=Profile(quality=85.0)))
    [kill] = rig.commands(KillSwitch)
    status, body = await argo(port, "bad")
    assert (status, body["verdict"], body["healthy"]) == (200, "halt", False)  # Argo: failureCondition
    assert body["reason"].startswith("kill switch: quality") and body["breaches"][0]["guard"] == "quality"
    status, body = await flagger(port, "check", "bad")
    assert (status, body["verdict"]) == (409, "halt")  # Flagger: non-2xx halts, the body goes to its events
    assert (await flagger(port, "rollback", "bad"))[0] == 200  # Flagger's rollback hook: roll back now
    assert kill.after.kill_switch


async def test_a_breaching_guard_halts_before_the_kill_switch(gated) -> None:
    """Staged rollback: the guard is in alarm and the canary only stepped down, no kill yet."""
    rig, port = gated
    staged = {"name": "staged", "staged": {"steps": [10, 0]}}
    await rig.publish([policy_change("staged", staged, canary_pct=50),
                       *runs("staged", 200, canary_pct=50, candidate=Profile(quality=85.0))])
    body = await until(port, "staged", "halt")
    assert body["kill_switch"] is False and body["canary_pct"] == 10.0
    assert "alarm" in body["guards"].values()
    assert (await flagger(port, "check", "staged"))[0] == 409


async def test_the_gate_refuses_what_it_must(gated) -> None:
    rig, port = gated
    await rig.publish([policy_change("known", None, canary_pct=5)])
    assert (await argo(port, "never-started"))[0] == 404
    status, headers, _ = await http(port, "GET", "/v1/rollouts/known/verdict")
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert (await flagger(port, "check", "known", token="wrong"))[0] == 401
    status, _, body = await http(port, "GET", f"/v1/rollouts/known/verdict?token={TOKEN}")
    assert status == 400 and "never go in a URL" in body["error"]
    assert (await http(port, "DELETE", "/v1/rollouts/known/verdict", {"Authorization": f"Bearer {TOKEN}"}))[0] == 405
    assert (await http(port, "POST", "/v1/flagger/check", {}, b"x" * 70_000))[0] == 413
    assert (await http(port, "POST", "/v1/flagger/check", {}, b"not json"))[0] == 400


async def test_each_client_is_rate_limited_with_retry_after(gated) -> None:
    rig, _ = gated
    gate = Gate(rig.js, rate_per_s=1, burst=2)
    port = await gate.start("127.0.0.1", 0)
    try:
        statuses = [(await http(port, "GET", "/healthz"))[:2] for _ in range(3)]
    finally:
        await gate.close()
    assert [s for s, _ in statuses] == [200, 200, 429]
    assert statuses[2][1]["Retry-After"] == "1"


async def test_the_gate_binds_like_the_engine(gated, tmp_path: Path) -> None:
    rig, _ = gated
    off = load_settings(env={}, data_dir=str(tmp_path))
    assert await start_gate(rig.js, off) is None  # gate_port 0: off
    public = load_settings(env={"ROLLOUT_GATE_PORT": "18080", "ROLLOUT_GATE_HOST": "0.0.0.0"}, data_dir=str(tmp_path))
    with pytest.raises(SettingsError, match="without a token"):
        await start_gate(rig.js, public)


async def test_rollout_api_serves_the_gate_when_gate_port_is_set(fresh_server: EmbeddedServer, tmp_path: Path) -> None:
    import os
    import socket
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    env = {**os.environ, "ROLLOUT_NATS_URL": fresh_server.url, "ROLLOUT_GATE_PORT": str(free)}
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(tmp_path), "api", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        line = ""
        while not line.startswith("rollout api:"):
            line = (await asyncio.wait_for(api.stdout.readline(), 30)).decode()
            assert line, "rollout api exited"
        assert f"deployment gate on http://127.0.0.1:{free}" in line, line
        assert (await http(free, "GET", "/healthz"))[2] == {"ok": True}
    finally:
        api.terminate()
        await api.wait()
