"""The runtime rides out a nats-server restart: nothing missed, nothing counted twice."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.consumer import Consumer
from rollout_engine.consumers.folding import Folder
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import LogMessage, encode_batch, subjects
from tests.integration.test_consumer_crash import batch_of


async def _publish(js: object, first: int, count: int, rng: random.Random) -> None:
    for n in range(first, first + count):
        subject, events = batch_of(n, rng)
        await js.publish_async(subject, encode_batch(events))  # type: ignore[attr-defined]
    await js.publish_async_completed()  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_consumer_survives_a_server_restart_mid_stream(fresh_server: EmbeddedServer, tmp_path: Path) -> None:
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"), consumer_batch=16)
    nc = await connect(settings, name="test-publisher")
    js = nc.jetstream()
    await provision(js, settings)
    rng = random.Random(11)
    await _publish(js, 0, 400, rng)

    runner = consumer_runner(Consumer(CanaryStats()), settings, nc=await connect(settings, name="test-consumer"))
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    fresh_server.port = fresh_server.client_port  # come back on the same port
    await asyncio.to_thread(fresh_server.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(fresh_server.start)
    for _ in range(100):  # the publisher reconnects too
        if nc.is_connected:
            break
        await asyncio.sleep(0.1)
    await _publish(js, 400, 200, rng)

    last = (await js.stream_info(subjects.LOG_STREAM)).state.last_seq
    for _ in range(300):
        if runner.folder.seq >= last:
            break
        await asyncio.sleep(0.1)
    runner.stop()
    summary = await asyncio.wait_for(task, 30)

    folder = Folder(CanaryStats())
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        folder.fold_batch([LogMessage(seq, msg.subject or "", msg.data or b"")])
    await runner.nc.close()
    await nc.close()
    assert summary.seq == last == 600
    assert summary.digest == folder.projection.digest()
