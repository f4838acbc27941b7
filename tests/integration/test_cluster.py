"""Cluster mode: a 3-node JetStream cluster on loopback with R3 streams survives a node loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.cluster import EmbeddedCluster
from rollout_engine.events import Metric, encode_batch, new_event_id, subjects


def _batch(rollout: str, n: int, start: int) -> bytes:
    return encode_batch([
        Metric(id=new_event_id(), rollout=rollout, time_ms=start + i, producer="t", variant="candidate",
               name="latency_ms", value=float(i))
        for i in range(n)
    ])


@pytest.mark.slow
async def test_r3_log_keeps_every_event_through_the_loss_and_return_of_a_node(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path, 3)
    await asyncio.to_thread(cluster.start)
    try:
        settings = load_settings(env={}, nats_url=cluster.url, replicas=3, data_dir=str(tmp_path / "data"))
        nc = await connect(settings)
        js = nc.jetstream()
        await provision(js, settings)
        info = await js.stream_info(subjects.LOG_STREAM)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

        for i in range(10):
            await js.publish(subjects.event("r1", "metric"), _batch("r1", 100, i * 100), headers={"Nats-Msg-Id": f"b{i}"})
        leader = info.cluster.leader
        victim = next(node for node in cluster.nodes if node.name == leader)
        await asyncio.to_thread(victim.kill)  # lose the stream leader

        published = 0
        for i in range(10, 20):
            for _ in range(100):  # a new leader is elected within a few seconds
                try:
                    await js.publish(subjects.event("r1", "metric"), _batch("r1", 100, i * 100),
                                     headers={"Nats-Msg-Id": f"b{i}"}, timeout=1)
                    published += 1
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        assert published == 10
        await asyncio.to_thread(victim.start)
        info = await js.stream_info(subjects.LOG_STREAM)
        assert info.state.messages == 20
        assert info.cluster.leader != leader or info.cluster.leader is not None
        await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)
