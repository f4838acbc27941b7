"""nats-server stopped and restarted mid-stream (data dir kept), with real processes on
both sides: an SDK producer falls back to its outbox and drains it; ``rollout consumer``
processes resume; nothing is lost or doubled.

Oracle: the stream holds exactly the events the producer recorded (unique ids, no
gaps), and each consumer's committed digest equals a clean fold of the stream.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_engine.consumers.consumer import stored_digest
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.cluster import free_ports
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import decode_message, subjects
from tests.integration.faultkit import SOAK, build, clean_fold, committed, last_seq, spawn, wait_for

CONSUMERS = ("canary_stats", "control", "rollback")
RECORDS = 3000 * SOAK
OUTAGES = SOAK


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    own = EmbeddedServer(tmp_path / "nats", port=free_ports(1)[0])  # a fixed port: a restart keeps the URL
    own.start()
    yield own
    own.stop()


@pytest.mark.slow
@pytest.mark.timeout(150 * SOAK)
async def test_server_restart_mid_stream_loses_and_doubles_nothing(server: EmbeddedServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = load_settings(env={}, nats_url=server.url, data_dir=str(data_dir), connect_timeout_s=0.5)
    nc = await connect(settings, name="test-provision")
    await provision(nc.jetstream(), settings)
    await nc.close()
    procs = [await spawn(server.url, data_dir, name, "--batch", "16") for name in CONSUMERS]
    nc = await connect(settings, name="test-wait")
    for name in CONSUMERS:  # connected and subscribed before the outage (imports are slow on a busy machine)
        for _ in range(600):
            try:
                await nc.jetstream().consumer_info(subjects.LOG_STREAM, name)
                break
            except Exception:
                await asyncio.sleep(0.05)
    await nc.close()
    rollouts = [f"restart-{i}" for i in range(4)]
    recorded: set[str] = set()
    deepest = 0
    try:
        async with RolloutClient(settings, producer="svc", outbox_path=tmp_path / "outbox.sqlite",
                                 batch_size=50) as client:
            for i in range(RECORDS):
                cycle = RECORDS // OUTAGES  # each cycle: up a third, down a third, up again
                if i % cycle == cycle // 3:
                    await asyncio.to_thread(server.stop)  # clean stop, JetStream data kept
                    await wait_for(lambda: client._jetstream() is None, 10, "the client to notice the outage")
                if i % cycle == 2 * cycle // 3:
                    await asyncio.to_thread(server.start)
                rollout = rollouts[i % len(rollouts)]
                variant = "candidate" if i % 3 == 0 else "baseline"
                if i % 2:
                    event = await client.record_metric(rollout, variant, "latency_ms", float(100 + i % 50))
                else:
                    event = await client.record_outcome(rollout, f"d{i}", variant, "win" if i % 5 else "loss",
                                                        quality=90.0)
                recorded.add(event.id)
                if i % 50 == 0:
                    await asyncio.sleep(0.005)
                    deepest = max(deepest, client.outbox_depth)
            await client.flush()
            assert deepest > 0, "the outage never reached the outbox"
            assert await client.wait_outbox_empty(30)

        nc = await connect(settings, name="test-check")
        js = nc.jetstream()
        last = await last_seq(js)
        await wait_for(lambda: all(committed(data_dir, n) == last for n in CONSUMERS), 120, "consumers to catch up")
        assert all(p.returncode is None for p in procs), "a consumer process died during the outage"
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in procs]
    assert codes == [0] * len(CONSUMERS)

    stored: list[str] = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        stored.extend(e.id for e in decode_message(msg.data or b"") if e.producer == "svc")
    assert len(stored) == len(set(stored)) == RECORDS, "an event was lost or stored twice"
    assert set(stored) == recorded
    for name in CONSUMERS:
        expected, _ = await clean_fold(js, name, settings, last)
        assert await stored_digest(build(name, settings), settings) == (last, expected), name
    await nc.close()
