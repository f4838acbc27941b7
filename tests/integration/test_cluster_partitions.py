"""Scale-out: a 3-node cluster, R3 partitioned log, SDK producers and partitioned consumer
processes; one nats node and one consumer process die under load and come back. The
projections end equal to a clean replay, partition by partition, and every regressing
rollout has exactly one kill switch, decided by the owner of its partition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import policy_change
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.cluster import EmbeddedCluster
from rollout_engine.engine.stack.partitioning import run_partitions
from rollout_engine.events import encode, subjects
from tests.integration.faultkit import build, spawn

N = 4
ROLLOUTS = [f"svc-{i}" for i in range(8)]
REGRESSING = {"svc-0", "svc-3", "svc-6"}


async def _produce(client: RolloutClient, rounds: range) -> None:
    """SDK traffic: per round and rollout a decision, its outcome and a latency metric."""
    for i in rounds:
        for rollout in ROLLOUTS:
            decision = client.decide(rollout, f"user-{i}")
            bad = rollout in REGRESSING and decision.variant == "candidate"
            await client.record_outcome(rollout, decision.id, decision.variant, "neutral", quality=80.0 if bad else 95.0)
            await client.record_metric(rollout, decision.variant, "latency_ms", 900.0, decision_id=decision.id)
        if i % 10 == 0:
            await asyncio.sleep(0.01)  # a service's pace: let the batches go out


async def _kill_switches(js: Any) -> dict[str, int]:
    info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=f"{subjects.ROOT}.ctl.*.kill_switch.*")
    return {subjects.parse(s).rollout or "": int(n) for s, n in (info.state.subjects or {}).items()}


async def _final(url: str, data_dir: Path, name: str) -> dict[int, str]:
    """Catch a consumer up over every partition; its digest per partition."""
    proc = await spawn(url, data_dir, name, "--partitions", f"0-{N - 1}", "--until-idle", "--json")
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (data_dir / f"{name}.stderr").read_text()[-2000:]
    return {row["partition"]: row["digest"] for row in json.loads(out)["partitions"]}


async def _clean(settings: Settings, name: str) -> dict[int, str]:
    summaries = await run_partitions(lambda: build(name, settings), settings, range(N), until_idle=True)
    return {p: s.digest for p, s in zip(range(N), summaries, strict=True)}


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_partitioned_consumers_on_a_cluster_survive_a_node_and_a_process_loss(tmp_path: Path) -> None:
    assert len({subjects.partition_of(r, N) for r in REGRESSING}) >= 2, "regressions in several partitions"
    cluster = EmbeddedCluster(tmp_path / "cluster", 3)
    await asyncio.to_thread(cluster.start)
    procs: list[Any] = []
    try:
        data_dir = tmp_path / "data"
        settings = load_settings(env={}, nats_url=cluster.url, replicas=3, partitions=N, data_dir=str(data_dir))
        nc = await connect(settings)
        js = nc.jetstream()
        await provision(js, settings)
        for rollout in ROLLOUTS:  # the operator opens each canary at 50 %
            start = policy_change(rollout, None, canary_pct=50.0, time_ms=1)
            await js.publish(subjects.for_event(start), encode(start))

        rollback_a = await spawn(cluster.url, data_dir, "rollback", "--partitions", "0,1", "--batch", "64")
        rollback_b = await spawn(cluster.url, data_dir, "rollback", "--partitions", "2,3", "--batch", "64")
        stats = await spawn(cluster.url, data_dir, "canary_stats", "--process", "0", "--of", "1")
        procs += [rollback_a, rollback_b, stats]

        async with RolloutClient(settings, producer="load", outbox_path=tmp_path / "sdk-outbox.sqlite") as client:
            await _produce(client, range(0, 60))
            await client.flush()
            info = await js.stream_info(subjects.LOG_STREAM)
            leader = next(node for node in cluster.nodes if node.name == info.cluster.leader)
            await asyncio.to_thread(leader.kill)  # the log's leader goes, under load
            rollback_a.send_signal(signal.SIGKILL)  # and so does the owner of partitions 0 and 1
            await rollback_a.wait()
            await _produce(client, range(60, 200))
            await asyncio.to_thread(leader.start)
            rollback_a = await spawn(cluster.url, data_dir, "rollback", "--partitions", "0,1", "--batch", "64")
            procs.append(rollback_a)
            await _produce(client, range(200, 300))
            await client.flush()
            assert await client.wait_outbox_empty(30), "the SDK delivered everything it buffered during the outage"

        async def decided() -> bool:
            return set(await _kill_switches(js)) >= REGRESSING

        for _ in range(300):  # the live owners decide (no final catch-up yet)
            if await decided():
                break
            await asyncio.sleep(0.1)
        assert await decided(), "every regressing rollout killed by its partition's live owner"

        for proc in (rollback_a, rollback_b, stats):
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        live = {name: await _final(cluster.url, data_dir, name) for name in ("rollback", "canary_stats")}
        # The clean replay publishes what it emits too: with the deployment's message-id key
        # (docs/security.md) its copies are de-duplicated, as a rebuilt consumer's would be.
        clean_settings = load_settings(env={}, nats_url=cluster.url, data_dir=str(tmp_path / "clean"),
                                       msg_id_key_file=str(data_dir / "secure" / "msgid.key"))
        for name in ("rollback", "canary_stats"):
            assert live[name] == await _clean(clean_settings, name), f"{name}: every partition equals a clean replay"

        kills = await _kill_switches(js)
        assert kills == dict.fromkeys(sorted(REGRESSING), 1), "exactly one kill switch per regressing rollout"
        await nc.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await asyncio.to_thread(cluster.stop)
