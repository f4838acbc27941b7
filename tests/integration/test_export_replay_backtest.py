"""Backtest over a recorded incident: the live policy's kill moment is reproduced exactly,
a stricter policy kills earlier, a trigger-happy one is caught killing a healthy rollout."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from rollout_engine.consumers.consumer import Consumer
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.logtools.export import write_export
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import KillSwitch, decode_lenient, subjects
from rollout_engine.events.message import log_messages

STRICT = """
[policy]
name = "strict"
min_samples = 10
"""
TRIGGER_HAPPY = """
[policy]
name = "trigger_happy"
min_samples = 10
[policy.thresholds]
max_latency_p95_ms = 800.0
"""


@pytest.fixture
async def incident(fresh_server, tmp_path):
    """A recorded log: a regressing rollout killed by the live rollback consumer, a healthy one."""
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"))
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    api = ControlApi(nc, js)
    for rollout in ("shop", "search"):
        await api.config({"rollout": rollout, "actor": "alice", "canary_pct": 50, "create": True})
    t0 = int(time.time() * 1000) + 10_000  # after the operators' config changes (event time is wall time there)
    events = runs("shop", 150, canary_pct=50, candidate=Profile(quality=82.0), t0=t0)
    healthy = runs("search", 150, canary_pct=50, t0=t0 + 100_000)
    for stream in (events, healthy):
        for subject, payload in log_messages(stream, 20):
            await js.publish(subject, payload)
    summary = await consumer_runner(Consumer(RollbackProjection()), settings, until_idle=True, fetch_timeout=0.2).run()
    assert summary.events > 0
    path = tmp_path / "incident.msgpack"
    await write_export(read_messages(js), path)
    kills = []
    async for msg in read_messages(js, [subjects.control("shop", "kill_switch")]):
        kills.extend(e for e in decode_lenient(msg.data)[0] if isinstance(e, KillSwitch))
    yield settings, path, kills
    await nc.close()


async def _backtest(settings, path, policy_text: str, tmp_path) -> dict:
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", settings.data_dir, "backtest", str(path),
           "--policy", str(policy), "--json"]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {row["rollout"]: row for row in json.loads(proc.stdout)["rollouts"]} | {"_totals": json.loads(proc.stdout)["totals"]}


async def test_backtest_reproduces_the_live_kill_and_a_stricter_policy_kills_earlier(incident, tmp_path) -> None:
    settings, path, kills = incident
    [live_kill] = kills
    assert live_kill.actor == "rollback"
    report = await _backtest(settings, path, STRICT, tmp_path)
    shop = report["shop"]
    assert shop["recorded_kill_ms"] == live_kill.time_ms
    assert shop["live_kill_ms"] == live_kill.time_ms and shop["replay_matches_recording"]
    assert shop["candidate_kill_ms"] is not None and shop["candidate_kill_ms"] < live_kill.time_ms
    assert shop["truth"] == "regressed" and not shop["candidate_missed_regression"]
    search = report["search"]
    assert search["live_kill_ms"] is None and search["candidate_kill_ms"] is None and search["truth"] == "healthy"
    assert report["_totals"]["replay_mismatches"] == 0


async def test_backtest_counts_false_kills_of_a_trigger_happy_policy(incident, tmp_path) -> None:
    settings, path, _kills = incident
    report = await _backtest(settings, path, TRIGGER_HAPPY, tmp_path)
    assert report["search"]["candidate_false_kill"] and "latency" in report["search"]["candidate_reason"]
    assert report["_totals"]["candidate_false_kills"] == 1 and report["_totals"]["live_false_kills"] == 0


async def test_a_malformed_policy_is_refused(incident, tmp_path) -> None:
    _settings, path, _kills = incident
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nmin_samples = "many"\n')
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "backtest", str(path), "--policy", str(bad)]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "min_samples" in proc.stderr
