"""The operator CLI end to end: real processes, a real nats-server, the API in-process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from rollout_engine.engine.logtools.export import read_export
from rollout_engine.events import Metric, Outcome, encode, subjects
from rollout_engine.events.ids import new_event_id

_ESC = re.compile(r"\x1b")




async def rollout_cli(settings, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `rollout ARGV` as a child process (off the event loop) with a pipe for stdout."""
    env = {**os.environ, "ROLLOUT_ACTOR": "cli-test"}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir", settings.data_dir, *argv]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    assert not _ESC.search(proc.stdout) and not _ESC.search(proc.stderr), "escape codes written to a pipe"
    return proc


async def _seed(js, rollout: str, n: int = 3) -> None:
    for i in range(n):
        await js.publish(subjects.event(rollout, "metric"), encode(Metric(
            id=new_event_id(), rollout=rollout, time_ms=1_000 + i, producer="svc", variant="candidate",
            name="latency_ms", value=10.0 + i)))
    await js.publish(subjects.event(rollout, "outcome"), encode(Outcome(
        id=new_event_id(), rollout=rollout, time_ms=2_000, producer="svc", decision_id="d1", variant="candidate",
        verdict="win")))


async def test_kill_status_resume_set_through_the_cli(api, settings, rollout_id) -> None:
    _nc, js = api
    await _seed(js, rollout_id)
    out = await rollout_cli(settings, "set", rollout_id, "--canary-pct", "10", "--reason", "start", "--json")
    assert json.loads(out.stdout)["after"]["canary_pct"] == 10
    out = await rollout_cli(settings, "kill", rollout_id, "--reason", "quality drop")
    assert "aborted" in out.stdout and "recorded as kill_switch" in out.stdout
    out = await rollout_cli(settings, "status", rollout_id)
    assert "KILLED" in out.stdout and "cli-test" in out.stdout and "quality drop" in out.stdout
    status = json.loads((await rollout_cli(settings, "status", rollout_id, "--json")).stdout)
    assert status["control"]["kill_switch"] is True and status["last_command"]["actor"] == "cli-test"
    out = await rollout_cli(settings, "resume", rollout_id, "--json")
    assert json.loads(out.stdout)["after"] == {**status["control"], "kill_switch": False, "canary_pct": 5.0,
                                              "config_version": status["control"]["config_version"] + 1}
    overview = json.loads((await rollout_cli(settings, "status", "--prefix", rollout_id, "--json")).stdout)
    assert any(r["rollout"] == rollout_id and r["canary_pct"] == 5.0 for r in overview["rollouts"])


async def test_cli_refusals_exit_2_with_a_clear_message(api, settings, rollout_id) -> None:
    _nc, js = api
    await _seed(js, rollout_id)
    cases = [
        (("set", rollout_id, "--canary-pct", "150"), "out of range"),
        (("set", "unknown-" + rollout_id, "--canary-pct", "5"), "unknown rollout"),
        (("kill", rollout_id), "--reason"),
        (("kill", rollout_id, "--reason", "bad \x1b[31m"), "control characters"),
        (("resume", rollout_id), "not killed"),
        (("status", "unknown-" + rollout_id), "unknown rollout"),
        (("set", rollout_id, "--canary-pct", "5", "--actor", ""), "operator identity"),
    ]
    for argv, expected in cases:
        proc = await rollout_cli(settings, *argv, check=False)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert expected in proc.stderr, (argv, proc.stderr)
    assert "kill_switch" not in str(await js.stream_info(subjects.LOG_STREAM, subjects_filter=f"ro.ctl.{rollout_id}.*"))


async def test_events_and_export(api, settings, rollout_id, tmp_path) -> None:
    _nc, js = api
    await _seed(js, rollout_id)
    await rollout_cli(settings, "kill", rollout_id, "--reason", "test")
    out = await rollout_cli(settings, "events", rollout_id)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and "metric" in lines[0] and "kill_switch" in lines[-1]
    records = [json.loads(line) for line in (await rollout_cli(settings, "events", rollout_id, "--json")).stdout.splitlines()]
    assert [r["event"]["kind"] for r in records] == ["metric"] * 3 + ["outcome", "kill_switch"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    since = await rollout_cli(settings, "events", rollout_id, "--since", "1h", "--json")
    assert len(since.stdout.splitlines()) == 5
    for name in ("log.jsonl", "log.msgpack"):
        target = tmp_path / name
        summary = json.loads((await rollout_cli(settings, "export", str(target), "--rollout", rollout_id, "--json")).stdout)
        assert summary["events"] == 5 and summary["messages"] == 5
        _header, recs, footer = read_export(target)
        assert footer["sha256"] == summary["sha256"] and len(recs) == 5
    whole = tmp_path / "all.msgpack"
    summary = json.loads((await rollout_cli(settings, "export", str(whole), "--json")).stdout)
    assert summary["last_seq"] >= records[-1]["seq"]
    future = json.loads((await rollout_cli(settings, "export", str(tmp_path / "none.jsonl"), "--since",
                                           "2999-01-01T00:00:00Z", "--json")).stdout)
    assert future["messages"] == 0


async def test_follow_prints_new_events(api, settings, rollout_id) -> None:
    _nc, js = api
    await _seed(js, rollout_id, n=1)
    env = {**os.environ}
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "events", rollout_id, "--follow",
           "--json", "--limit", "3"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert json.loads(first)["event"]["kind"] == "metric"
    await _seed(js, rollout_id, n=1)
    rest = await asyncio.wait_for(proc.communicate(), 30)
    kinds = [json.loads(x)["event"]["kind"] for x in rest[0].decode().splitlines()]
    assert kinds == ["outcome", "metric"]
    assert proc.returncode == 0


async def test_weekly_report_from_the_stream_and_from_an_export(api, settings, rollout_id, tmp_path) -> None:
    import time as _time

    from rollout_engine.consumers.rollback.scenario import Profile, runs
    from rollout_engine.events import encode_batch, kind_of

    _nc, js = api
    events = runs(rollout_id, 60, canary_pct=50, candidate=Profile(quality=80.0), t0=int(_time.time() * 1000) - 3_600_000)
    for kind in ("decision", "outcome", "metric"):  # each kind on its own subject (the log refuses others)
        await js.publish(subjects.event(rollout_id, kind), encode_batch([e for e in events if kind_of(e) == kind]))
    await rollout_cli(settings, "kill", rollout_id, "--reason", "quality")
    out = json.loads((await rollout_cli(settings, "report", "--week", "--json", "--out", str(tmp_path / "r"))).stdout)
    mine = out["rollouts"][rollout_id]
    assert mine["decisions"] == {"baseline": 30, "candidate": 30} and len(mine["kills"]) == 1
    from pathlib import Path

    assert Path(out["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"## {rollout_id}" in Path(out["markdown"]).read_text()
    export = tmp_path / "log.msgpack"
    await rollout_cli(settings, "export", str(export), "--rollout", rollout_id)
    text = await rollout_cli(settings, "report", "--file", str(export), "--out", str(tmp_path / "f"))
    assert "weekly report" in text.stdout and "1 rollouts" in text.stdout
    bad = await rollout_cli(settings, "report", "--week", "2026-W99", check=False)
    assert bad.returncode == 2 and "ISO week" in bad.stderr


async def test_rollout_api_serves_until_sigterm(bus, settings) -> None:
    import signal

    from rollout_engine.engine.api.client import ApiError, call

    nc, _js = bus
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "api"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"serving" in line
        health = await call(nc, "health")
        assert health["ok"] is True
        info = json.loads((await nc.request("$SRV.INFO.rollout-api", b"", timeout=5)).data)
        assert info["name"] == "rollout-api"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    with pytest.raises(ApiError) as err:
        await call(nc, "health", timeout=2)
    assert err.value.code == 503


async def test_evaluate_through_the_cli(api, settings, rollout_id) -> None:
    import time as _time

    from rollout_engine.consumers.rollback.scenario import Profile, runs
    from rollout_engine.events.message import log_messages

    _nc, js = api
    await rollout_cli(settings, "set", rollout_id, "--canary-pct", "50", "--create")
    events = runs(rollout_id, 100, canary_pct=50, candidate=Profile(latency_ms=2500.0), t0=int(_time.time() * 1000) + 5_000)
    for subject, payload in log_messages(events, 1000):
        await js.publish(subject, payload)
    dry = json.loads((await rollout_cli(settings, "evaluate", rollout_id, "--dry-run", "--json")).stdout)
    assert dry["would_kill"] and not dry["killed_now"] and "latency" in dry["reasons"][0]
    text = await rollout_cli(settings, "evaluate", rollout_id)
    assert "killed now: YES" in text.stdout and "latency" in text.stdout
    status = json.loads((await rollout_cli(settings, "status", rollout_id, "--json")).stdout)
    assert status["control"]["kill_switch"] and status["last_command"]["actor"] == "rollback"
    assert status["last_command"]["breaches"][0]["guard"] == "latency"
