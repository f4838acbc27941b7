"""Kill-switch propagation you can see, against a real stack and SDK instances in three
processes (bench/fleet.py): every instance acknowledges the kill's revision in
``rollout status --json``; an instance paused (SIGSTOP) during the kill is lagging, and
applies it when it resumes (``rollout wait --for killed --applied`` returns then); an
instance killed (SIGKILL) goes stale after its TTL.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from rollout_engine.engine.api.propagation import Propagation, propagation_of
from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.stack.metrics import LogMetrics, build_registry

ROOT = Path(__file__).resolve().parents[2]
SHORT_TTL_S = 1.5
"""ack_ttl_s of the instances that must go stale quickly once SIGKILLed."""
LONG_TTL_S = 120.0
"""ack_ttl_s of the instance paused during the kill: a pause never makes it stale."""


class Fleet:
    """One ``python -m bench.fleet`` process and the instance ids it reported."""

    def __init__(self, proc: asyncio.subprocess.Process, instances: list[str]) -> None:
        self.proc = proc
        self.instances = instances

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


async def spawn(url: str, service: str, clients: int, ttl: float) -> Fleet:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fleet", "--nats-url", url, "--service", service, "--clients", str(clients),
        "--ack-ttl", str(ttl), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line, f"the fleet process {service} exited before it was ready (code {await proc.wait()})"
    return Fleet(proc, json.loads(line)["instances"])


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def rollout_cli(url: str, *argv: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, *argv, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()[-2000:]
    return int(proc.returncode or 0), json.loads(out)


def by_instance(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["instance"]: item for item in section["instances"]}


async def test_every_instance_acknowledges_the_kill_and_pauses_and_crashes_show(stack, rollout_id) -> None:
    settings, nc, js = stack
    url = settings.nats_url
    api = ControlApi(nc)
    await api.config({"rollout": rollout_id, "canary_pct": 20.0, "create": True, "actor": "test"})
    checkout = await spawn(url, "checkout", 2, SHORT_TTL_S)
    search = await spawn(url, "search", 1, SHORT_TTL_S)
    paused = await spawn(url, "checkout", 1, LONG_TTL_S)
    fleets = [checkout, search, paused]
    try:
        await until(lambda: _following(js, rollout_id, 4), "four live instances")
        paused.signal(signal.SIGSTOP)
        reply = await api.rollback({"rollout": rollout_id, "actor": "test", "reason": "propagation test"})
        kill_seq = reply["command"]["seq"]

        async def others_applied() -> Propagation | None:
            result = await propagation_of(js, rollout_id, kill_seq)
            return result if result.applied == 3 else None

        await until(others_applied, "the running instances to apply the kill")
        metrics = LogMetrics()  # what /metrics shows now: one instance lags the kill
        await metrics.refresh(js)
        lagging = metrics.propagation
        assert (lagging.following[rollout_id], lagging.lagging[rollout_id]) == (4, 1)
        assert lagging.kill_unapplied_s[rollout_id] > 0
        code, status = await rollout_cli(url, "status", rollout_id)
        section = status["propagation"]
        assert code == 0 and section["revision"] == kill_seq and section["command"] == "kill_switch"
        assert (section["following"], section["applied"], section["lagging"]) == (4, 3, 1)
        states = by_instance(section)
        assert states[paused.instances[0]]["status"] == "lagging"
        assert states[paused.instances[0]]["revision"] < kill_seq
        for instance in checkout.instances + search.instances:
            assert states[instance]["status"] == "applied" and states[instance]["revision"] == kill_seq
            assert states[instance]["command_id"] == reply["command"]["id"]
            assert states[instance]["latency_ms"] is not None and states[instance]["latency_ms"] >= 0

        code, late = await rollout_cli(url, "wait", rollout_id, "--for", "killed", "--applied", "--timeout", "1s")
        assert code == 3 and late["result"] == "timeout"  # the kill is on, one instance has not applied it
        assert [i["instance"] for i in late["propagation"]["instances"] if i["status"] == "lagging"] == paused.instances

        waiter = asyncio.create_task(rollout_cli(url, "wait", rollout_id, "--for", "killed", "--applied",
                                                 "--timeout", "60s"))
        await asyncio.sleep(0.5)
        assert not waiter.done(), "wait --applied returned while an instance had not applied the kill"
        paused.signal(signal.SIGCONT)
        code, waited = await waiter
        assert code == 0 and waited["result"] == "met" and waited["propagation"]["complete"]
        assert waited["propagation"]["applied"] == 4

        code, status = await rollout_cli(url, "status", rollout_id)
        section = status["propagation"]
        assert section["summary"].startswith("applied by 4 of 4 instances, slowest ")
        assert all(i["status"] == "applied" and i["revision"] == kill_seq for i in section["instances"])
        await metrics.refresh(js)
        assert (lagging.lagging[rollout_id], lagging.kill_unapplied_s[rollout_id]) == (0, 0)
        assert sum(lagging.buckets) == 4  # one latency per instance and revision applied live
        exposition = generate_latest(build_registry(metrics, include_default=False)).decode()
        assert f'rollout_instances_following{{rollout="{rollout_id}"}} 4.0' in exposition
        check = await asyncio.to_thread(subprocess.run, [shutil.which("promtool") or "promtool", "check", "metrics"],
                                        input=exposition, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr

        search.signal(signal.SIGKILL)

        async def search_stale() -> Propagation | None:
            result = await propagation_of(js, rollout_id, kill_seq)
            return result if result.stale == 1 else None

        result = await until(search_stale, "the SIGKILLed instance to go stale after its TTL")
        stale = [i for i in result.instances if i.status == "stale"]
        assert [i.instance for i in stale] == search.instances and stale[0].revision == kill_seq
        assert (result.following, result.applied, result.complete) == (3, 3, True)
    finally:
        for fleet in fleets:
            if fleet.proc.returncode is None:
                fleet.signal(signal.SIGCONT)
                fleet.signal(signal.SIGTERM)
        for fleet in fleets:
            await asyncio.wait_for(fleet.proc.wait(), 30)


async def _following(js: Any, rollout: str, count: int) -> bool:
    return (await propagation_of(js, rollout, 0)).following == count
