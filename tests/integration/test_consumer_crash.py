"""SIGKILL the canary_stats consumer process at random points while events flow.

Nothing missed, nothing counted twice: after 20+ kills and a final run to the end of
the log, the committed projection's digest equals a clean fold of the same log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.folding import Folder
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import (
    Decision,
    Event,
    LogMessage,
    Metric,
    Outcome,
    encode,
    encode_batch,
    subjects,
)
from tests.integration.faultkit import SOAK

T0 = 1_700_000_000_000
KILLS = 12 * SOAK  # 12 random instants in make test; make soak runs ten times as many


def batch_of(n: int, rng: random.Random) -> tuple[str, list[Event]]:
    rollout = f"crash-{n % 7}"
    kind = ("decision", "outcome", "metric")[n % 3]
    t = T0 + n * 50
    events: list[Event] = []
    for i in range(40):
        common = {"id": f"e{n}x{i}", "rollout": rollout, "time_ms": t + i, "producer": "test"}
        variant = "candidate" if rng.random() < 0.3 else "baseline"
        if kind == "decision":
            events.append(Decision(unit=f"u{i}", variant=variant, reason="canary", canary_pct=30.0,
                                   config_version=1, propensity=0.3, **common))
        elif kind == "outcome":
            events.append(Outcome(decision_id="d", variant=variant, verdict=rng.choice(("win", "loss", "neutral")),
                                  quality=rng.gauss(90, 4), **common))
        else:
            events.append(Metric(variant=variant, name=rng.choice(("latency_ms", "cost_cents", "error")),
                                 value=rng.lognormvariate(5, 0.5), **common))
    return subjects.event(rollout, kind), events


def spawn(url: str, data_dir: Path, *extra: str) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "--data-dir", str(data_dir),
            "consumer", "canary_stats", "--batch", "8", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,  # type: ignore[return-value]
                                          stderr=asyncio.subprocess.DEVNULL, env=env)


def committed(data_dir: Path) -> int:
    path = data_dir / "consumers" / "canary_stats.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT MAX(seq) FROM tracking").fetchone()
    except sqlite3.OperationalError:  # the process is still creating its tables
        return 0
    return int(row[0] or 0)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_at_random_points_loses_nothing_and_counts_nothing_twice(
    fresh_server: EmbeddedServer, stack: tuple[Settings, Any, Any]
) -> None:
    settings, _nc, js = stack  # own server, provisioned; closed by the fixture
    data_dir = Path(settings.data_dir)
    rng = random.Random(2026)
    made = 0

    async def publish(count: int, pause: float = 0.0) -> None:
        nonlocal made
        for _ in range(count):
            subject, events = batch_of(made, rng)
            await js.publish_async(subject, encode_batch(events))
            if made % 10 == 0:
                tick = make_tick(T0 + made * 50, 250)
                await js.publish_async(subjects.TICK, encode(tick))
            made += 1
            if pause:
                await asyncio.sleep(pause)
        await js.publish_async_completed()

    await publish(1500)  # a backlog, so kills land mid-fold and mid-commit
    flowing = asyncio.create_task(publish(800, pause=0.02))  # about as long as the kills take
    positions = []
    for i in range(KILLS):
        process = await spawn(fresh_server.url, data_dir)
        if i % 2:  # any instant: start-up, restore, fold, commit, ack
            await asyncio.sleep(rng.uniform(0.3, 1.5))
        else:  # mid-stream: once this process has committed, a few batches later
            start = committed(data_dir)
            for _ in range(200):
                await asyncio.sleep(0.025)
                if committed(data_dir) != start:
                    break
            await asyncio.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        await process.wait()
        positions.append(committed(data_dir))
    await flowing

    final = await spawn(fresh_server.url, data_dir, "--until-idle", "--json")
    out, _ = await asyncio.wait_for(final.communicate(), 60)
    assert final.returncode == 0
    result = json.loads(out)

    info = await js.stream_info(subjects.LOG_STREAM)
    last = info.state.last_seq
    folder = Folder(CanaryStats())
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        folder.fold_batch([LogMessage(seq, msg.subject or "", msg.data or b"")])

    assert result["seq"] == last
    assert result["digest"] == folder.projection.digest()
    assert result["dead_letters"] == 0
    progressed = sorted(set(positions))
    assert len(progressed) >= 5 and 0 < progressed[len(progressed) // 2] < last, positions


@pytest.mark.timeout(120)
async def test_sigterm_drains_commits_and_exits_cleanly(fresh_server: EmbeddedServer, stack: tuple[Settings, Any, Any]) -> None:
    settings, _nc, js = stack  # own server, provisioned; closed by the fixture
    data_dir = Path(settings.data_dir)
    rng = random.Random(7)
    for n in range(300):
        subject, events = batch_of(n, rng)
        await js.publish_async(subject, encode_batch(events))
    await js.publish_async_completed()
    process = await spawn(fresh_server.url, data_dir)
    for _ in range(300):
        await asyncio.sleep(0.05)
        if committed(data_dir) > 0:
            break
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    position = committed(data_dir)
    assert position > 0

    digest_run = await spawn(fresh_server.url, data_dir, "--digest", "--json")
    out, _ = await digest_run.communicate()
    stored = json.loads(out)
    folder = Folder(CanaryStats())
    for seq in range(1, position + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        folder.fold_batch([LogMessage(seq, msg.subject or "", msg.data or b"")])
    assert stored == {"consumer": "canary_stats", "seq": position, "digest": folder.projection.digest()}
