"""SIGKILL every registered consumer process at random points (mid-fold, mid-commit,
mid-relay) while events flow; nothing is lost and nothing counted twice.

``test_consumer_crash.py`` already kills ``canary_stats`` 12 times; this lean loop
covers every consumer in ``consumers.registry`` at once: all run side by side, each is
killed at its own random instant, ``ROUNDS`` times. Then each runs to the end of the log
and its committed digest must equal a clean fold of the stream (which by then also
holds every command the consumers emitted, exactly once thanks to ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

import pytest

from rollout_engine.consumers import registry
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import encode, encode_batch, subjects
from tests.integration.faultkit import SOAK, T0, batch, clean_fold, committed, last_seq, spawn

ROUNDS = 3 * SOAK


@pytest.mark.slow
@pytest.mark.timeout(240 * SOAK)
async def test_every_consumer_killed_at_random_points_loses_and_doubles_nothing(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    names = registry.names()
    assert {"control", "canary_stats", "rollback", "bandit", "verification"} <= set(names)
    data_dir = tmp_path / "data"
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(data_dir))
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    rng = random.Random(1010)
    made = 0

    done = asyncio.Event()

    async def publish(count: int, pause: float = 0.0) -> None:
        nonlocal made
        for _ in range(count):
            if done.is_set():
                break
            # A regressing candidate in one rollout, so the rollback consumer emits commands too.
            subject, events = batch(made, f"kill-{made % 5}", size=20)
            await js.publish_async(subject, encode_batch(events))
            if made % 8 == 0:
                await js.publish_async(subjects.TICK, encode(make_tick(T0 + made * 50, 250)))
            made += 1
            if pause:
                await asyncio.sleep(pause)
        await js.publish_async_completed()

    await publish(400)  # a backlog: kills land mid-fold and mid-commit
    flowing = asyncio.create_task(publish(5000 * SOAK, pause=0.01))  # flows until the kills are over
    positions: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(ROUNDS):
        procs = {name: await spawn(fresh_server.url, data_dir, name, "--batch", "8") for name in names}
        for name in rng.sample(names, len(names)):
            before = committed(data_dir, name)
            for _ in range(60):  # let it start folding (imports take a while on 2 busy cores)
                if committed(data_dir, name) > before:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert procs[name].returncode is None, (data_dir / f"{name}.stderr").read_text()[-2000:]
            procs[name].send_signal(signal.SIGKILL)
        for name, proc in procs.items():
            await proc.wait()
            positions[name].append(committed(data_dir, name))
    done.set()
    await flowing

    # Run every consumer to the end until the log stops growing (relayed commands extend it).
    results: dict[str, dict[str, object]] = {}
    previous = -1
    while previous != (last := await last_seq(js)):
        previous = last
        procs = {name: await spawn(fresh_server.url, data_dir, name, "--until-idle", "--json") for name in names}
        for name, proc in procs.items():
            out, _ = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0, (data_dir / f"{name}.stderr").read_text()[-2000:]
            results[name] = json.loads(out)

    for name in names:
        expected, _ = await clean_fold(js, name, settings, last)
        assert results[name]["seq"] == last, (name, results[name], last)
        assert results[name]["digest"] == expected, name
        assert results[name]["dead_letters"] == 0, name
    ids = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        if msg.headers and msg.headers.get("Nats-Msg-Id"):
            ids.append(msg.headers["Nats-Msg-Id"])
    await nc.close()
    assert len(ids) == len(set(ids)), "an emitted command was published twice"
    assert sum(1 for ps in positions.values() for p in ps if 0 < p < last) >= len(names), positions
