"""A log partitioned by rollout: the server's mapping, per-partition folds, moving partitions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from rollout_engine.consumers.consumer import PartitionMismatch
from rollout_engine.consumers.rollback.scenario import policy_change
from rollout_engine.consumers.runtime import Runner
from rollout_engine.engine.api.control_log import known_rollouts, read_control
from rollout_engine.engine.bus import BusUnavailable, connect, provision
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.partitioning import run_partitions
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import Metric, encode, new_event_id, subjects
from tests.integration.faultkit import ROOT, build, publish, wait_for

N = 4
ROLLOUTS = [f"svc-{i}" for i in range(8)]


def _settings(server: EmbeddedServer, data_dir: Path, partitions: int = N) -> Settings:
    return load_settings(env={}, nats_url=server.url, data_dir=str(data_dir), partitions=partitions)


async def _parts(settings: Settings, partitions: list[int]) -> dict[int, dict[str, bytes]]:
    """Fold the given partitions of canary_stats to the end; each partition's parts."""
    out: dict[int, dict[str, bytes]] = {}

    def keep(runners: list[Runner]) -> None:
        for runner in runners:
            out[runner.partition] = runner.projection  # type: ignore[index,assignment]

    await run_partitions(lambda: build("canary_stats", settings), settings, partitions, until_idle=True,
                         on_runners=keep)
    return {p: projection.all_parts() for p, projection in out.items()}  # type: ignore[attr-defined]


async def test_the_partition_of_a_rollout_is_the_servers_mapping(fresh_server: EmbeddedServer, tmp_path: Path) -> None:
    settings = _settings(fresh_server, tmp_path)
    nc = await connect(settings)
    js = nc.jetstream()
    await provision(js, settings)
    rollouts = [f"r{i}" for i in range(40)]
    for rollout in rollouts:
        event = Metric(id=new_event_id(), rollout=rollout, time_ms=1, producer="t", variant="baseline",
                       name="latency_ms", value=1.0)
        await js.publish(subjects.event(rollout, "metric"), encode(event))
    await js.publish(subjects.TICK, b"")
    info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=">")
    stored = info.state.subjects or {}
    assert len(stored) == 41 and subjects.TICK in stored  # ticks keep no partition: every partition reads them
    for rollout in rollouts:
        assert f"{subjects.event(rollout, 'metric')}.{subjects.partition_of(rollout, N)}" in stored
    assert {subjects.partition_of(r, N) for r in rollouts} == set(range(N))
    assert subjects.parse(f"{subjects.control('r1', 'kill_switch')}.3") == ("ctl", "r1", "kill_switch")

    # Rollout-scoped reads (status, the operator API) find a rollout's subjects in either layout.
    change = policy_change("r7", None, canary_pct=25.0, time_ms=5)
    await js.publish(subjects.for_event(change), encode(change))
    view = await read_control(js, "r7")
    assert view.state.canary_pct == 25.0 and view.control_seq == view.command_seq > 0
    assert (await known_rollouts(js, "r7")) == {"r7": {"config": 1, "metric": 1}}

    with pytest.raises(BusUnavailable, match="partition count is fixed"):
        await provision(js, _settings(fresh_server, tmp_path, partitions=8))
    with pytest.raises(PartitionMismatch, match="has 4 partitions"):
        await consumer_runner(build("canary_stats", settings), settings, nc=nc, partition=N, until_idle=True).run()
    await nc.close()


async def test_each_rollout_is_folded_by_its_partition_exactly_as_by_one_whole_log_consumer(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = _settings(fresh_server, tmp_path / "parts")
    nc = await connect(settings)
    js = nc.jetstream()
    await provision(js, settings)
    await publish(js, 0, 60, lambda n: ROLLOUTS[n % len(ROLLOUTS)])
    for _ in range(3):
        await js.publish(subjects.TICK, b"")

    whole = build("canary_stats", settings)
    await consumer_runner(whole, load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "whole")),
                 nc=nc, until_idle=True).run()
    expected = whole.projection.all_parts()  # type: ignore[attr-defined]
    parts = await _parts(settings, list(range(N)))
    for rollout in ROLLOUTS:
        owner = subjects.partition_of(rollout, N)
        assert parts[owner][rollout] == expected[rollout], rollout
        assert all(rollout not in parts[p] for p in range(N) if p != owner)
    await nc.close()


async def test_moving_a_partition_to_another_process_moves_its_checkpoint(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = _settings(fresh_server, data_dir)
    nc = await connect(settings)
    js = nc.jetstream()
    await provision(js, settings)
    await publish(js, 0, 40, lambda n: ROLLOUTS[n % len(ROLLOUTS)])
    await _parts(settings, [0, 1, 2, 3])  # one process owned every partition
    await publish(js, 40, 40, lambda n: ROLLOUTS[n % len(ROLLOUTS)])

    # Two processes now: `--process 0 --of 2` and `--process 1 --of 2` (p % 2 == K).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outputs = []
    for process in (0, 1):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", fresh_server.url, "--data-dir", str(data_dir),
            "consumer", "canary_stats", "--process", str(process), "--of", "2", "--until-idle", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        report = json.loads(out)
        assert report["consumer"] == "canary_stats"
        outputs.extend(report["partitions"])
    assert sorted(o["partition"] for o in outputs) == [0, 1, 2, 3]
    assert [o["partition"] for o in outputs[:2]] == [0, 2]
    new_events = 40 * 20
    assert sum(o["events"] for o in outputs) == new_events, "each new event folded once, none of the old again"

    clean = _settings(fresh_server, tmp_path / "clean")
    clean_parts = await _parts(clean, [0, 1, 2, 3])
    moved = {o["partition"]: o["digest"] for o in outputs}
    from rollout_engine.consumers.consumer import stored_digest

    for partition in range(N):
        _, digest_clean = await stored_digest(build("canary_stats", clean), clean, partition)
        assert moved[partition] == digest_clean, partition
        assert set(clean_parts[partition]) - {""} == {r for r in ROLLOUTS if subjects.partition_of(r, N) == partition}
    await nc.close()


async def test_a_delivery_lost_to_another_pull_makes_the_partition_rewind_and_fold_it(
    fresh_server: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(fresh_server, tmp_path / "data")
    nc = await connect(settings)
    js = nc.jetstream()
    await provision(js, settings)
    rollout = next(r for r in ROLLOUTS if subjects.partition_of(r, N) == 0)
    await publish(js, 0, 3, lambda n: rollout)
    runner = consumer_runner(build("canary_stats", settings), settings, nc=nc, partition=0, fetch_timeout=0.2)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: runner.folder.events == 60, 10, "the first batches to be folded")

    # Another pull on the same durable takes one delivery and never acks it: the runner
    # sees a hole in the delivery sequence (or, if it was the last one, an unacked message).
    thief = await js.pull_subscribe_bind(durable=runner.name, stream=subjects.LOG_STREAM)
    stolen = asyncio.ensure_future(thief.fetch(1, timeout=5))
    for n in range(3, 8):
        await publish(js, n, 1, lambda _: rollout)
        await asyncio.sleep(0.05)
    assert len(await stolen) == 1
    await wait_for(lambda: runner.folder.events == 8 * 20, 15, "every event, the stolen one included")
    runner.stop()
    summary = await task
    assert summary.events == 8 * 20, "each event folded once"
    assert "rewinding" in caplog.text

    clean = _settings(fresh_server, tmp_path / "clean")
    clean_run = await consumer_runner(build("canary_stats", clean), clean, nc=nc, partition=0, until_idle=True).run()
    assert summary.digest == clean_run.digest
    await nc.close()
