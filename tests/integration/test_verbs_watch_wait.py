"""Operator verbs, `status --watch` and `wait` end to end: real processes, a real nats-server, the API.

The verbs go through the CLI (one process each) to the API served in-process; watch and
wait run as child processes and must react to commands pushed while they run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.cli import build_parser
from rollout_engine.engine.cli.events import describe_event
from rollout_engine.events import Metric, decode, decode_json, encode, subjects
from rollout_engine.events.ids import new_event_id
from tests.integration.test_cli import rollout_cli

STEPS = [5.0, 20.0, 50.0, 100.0]


async def _configured(nc, js, rollout: str) -> None:
    """A rollout with traffic in the log, at the first of four progression steps."""
    await js.publish(subjects.event(rollout, "metric"), encode(Metric(
        id=new_event_id(), rollout=rollout, time_ms=1_000, producer="svc", variant="candidate",
        name="latency_ms", value=10.0)))
    await call(nc, "config", {"rollout": rollout, "actor": "alice", "canary_pct": 5, "reason": "start",
                              "policy": {"progression": {"steps": STEPS}}})


async def _spawn(settings, *argv: str) -> asyncio.subprocess.Process:
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, *argv]
    return await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "ROLLOUT_ACTOR": "cli-test"})


async def _json_line(proc: asyncio.subprocess.Process) -> dict:
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line, (await proc.stderr.read()).decode()
    return json.loads(line)


async def test_promote_pause_abort_retry_are_audited_commands(api, settings, rollout_id) -> None:
    nc, js = api
    await _configured(nc, js, rollout_id)

    async def verb(*argv: str) -> dict:
        return json.loads((await rollout_cli(settings, *argv, rollout_id, "--json")).stdout)

    assert (await verb("promote", "--reason", "5% looked fine"))["after"]["canary_pct"] == 20.0
    assert (await verb("pause", "--reason", "hold for the release freeze"))["after"]["paused"] is True
    again = await call(nc, "pause", {"rollout": rollout_id, "actor": "alice"})
    assert again["changed"] is False
    status = await call(nc, "status", {"rollout": rollout_id})
    assert status["progression"] == {"enabled": False, "steps": STEPS, "step": 2, "of": 4, "paused": True}
    assert (await call(nc, "unpause", {"rollout": rollout_id, "actor": "cli-test"}))["after"]["paused"] is False
    aborted = await verb("abort", "--reason", "error spike")
    assert aborted["after"]["kill_switch"] is True and aborted["after"]["canary_pct"] == 0.0
    again = await call(nc, "abort", {"rollout": rollout_id, "actor": "alice", "reason": "again"})
    assert again["changed"] is False
    parser = build_parser()  # `kill` is the same command as `abort`, under its older name
    assert parser.parse_args(["kill", rollout_id, "--reason", "x"]).handler is \
        parser.parse_args(["abort", rollout_id, "--reason", "x"]).handler
    with pytest.raises(ApiError) as refused:
        await call(nc, "promote", {"rollout": rollout_id, "actor": "alice"})
    assert refused.value.code == 409 and "retry" in refused.value.message
    retried = await verb("retry", "--reason", "hotfix 1.4.2")
    assert retried["after"]["kill_switch"] is False and retried["after"]["canary_pct"] == STEPS[0]
    assert (await verb("promote", "--full"))["after"]["canary_pct"] == 100.0

    records = [json.loads(line) for line in
               (await rollout_cli(settings, "events", rollout_id, "--json")).stdout.splitlines()]
    commands = [r["event"] for r in records if r["event"]["kind"] in ("config", "kill_switch", "resume")]
    assert [(c["kind"], c.get("action")) for c in commands] == [
        ("config", "set"), ("config", "promote"), ("config", "pause"), ("config", "unpause"),
        ("kill_switch", "abort"), ("resume", "retry"), ("config", "promote_full")]
    assert all(c["actor"] == "cli-test" for c in commands[1:])
    assert commands[2]["reason"] == "hold for the release freeze" and "error spike" in commands[4]["reason"]
    assert describe_event(decode_json(json.dumps(commands[4]))).startswith("action=abort actor=cli-test")


async def test_status_watch_prints_one_json_line_per_pushed_change(api, settings, rollout_id) -> None:
    nc, js = api
    await _configured(nc, js, rollout_id)
    watch = await _spawn(settings, "status", rollout_id, "--watch", "--json")
    try:
        first = await _json_line(watch)
        assert (first["change"], first["phase"], first["step"], first["of"]) == ("initial", "progressing", 1, 4)
        await call(nc, "abort", {"rollout": rollout_id, "actor": "bob", "reason": "latency"})
        killed = await _json_line(watch)
        assert (killed["change"], killed["phase"]) == ("kill_switch", "aborted")
        assert killed["last_command"]["actor"] == "bob" and killed["last_command"]["action"] == "abort"
        await nc.publish(subjects.stats(rollout_id), b'{"rollout": "x", "windows": {}}')
        stats = await _json_line(watch)
        assert stats["change"] == "stats" and stats["stats"] == {"rollout": "x", "windows": {}}
        await call(nc, "retry", {"rollout": rollout_id, "actor": "bob"})
        assert (await _json_line(watch))["phase"] == "progressing"
    finally:
        watch.send_signal(signal.SIGINT)
        await asyncio.wait_for(watch.wait(), 30)
    assert watch.returncode == 0


async def test_wait_exit_codes(api, settings, rollout_id) -> None:
    """0 met (while waiting, from a pushed command), 1 opposite state, 2 error, 3 timeout."""
    nc, js = api
    await _configured(nc, js, rollout_id)
    killed = await _spawn(settings, "wait", rollout_id, "--for", "killed", "--timeout", "60s", "--json")
    step = await _spawn(settings, "wait", rollout_id, "--for", "step=3", "--timeout", "60s")
    healthy = await _spawn(settings, "wait", rollout_id, "--for", "healthy", "--timeout", "60s")
    timeout = await _spawn(settings, "wait", rollout_id, "--for", "promoted", "--timeout", "1s")
    errors = [await _spawn(settings, "wait", "unknown-" + rollout_id, "--for", "killed"),
              await _spawn(settings, "wait", rollout_id, "--for", "step=9")]
    assert await asyncio.wait_for(timeout.wait(), 30) == 3
    for proc in errors:
        assert await asyncio.wait_for(proc.wait(), 30) == 2
    assert b"pick step=1..4" in await errors[1].stderr.read()
    for _ in range(2):  # two promotes: 5 -> 20 -> 50, step 3
        await call(nc, "promote", {"rollout": rollout_id, "actor": "alice"})
    assert await asyncio.wait_for(step.wait(), 30) == 0
    evaluation = {"rollout": rollout_id, "verdict": "healthy", "kill_switch": False, "guards": {}}
    await nc.publish(subjects.evaluation(rollout_id), json.dumps(evaluation).encode())
    assert await asyncio.wait_for(healthy.wait(), 30) == 0
    assert killed.returncode is None  # still waiting: nothing killed it yet
    reply = await call(nc, "abort", {"rollout": rollout_id, "actor": "bob", "reason": "latency"})
    assert await asyncio.wait_for(killed.wait(), 30) == 0
    result = json.loads(await killed.stdout.read())
    assert (result["result"], result["exit_code"], result["phase"]) == ("met", 0, "aborted")
    assert result["last_command"]["seq"] == reply["command"]["seq"]
    opposite = await rollout_cli(settings, "wait", rollout_id, "--for", "promoted", check=False)
    assert opposite.returncode == 1 and "aborted" in opposite.stdout
    stored = decode((await js.get_last_msg(subjects.LOG_STREAM, subjects.control(rollout_id, "kill_switch"))).data)
    assert stored.action == "abort"
