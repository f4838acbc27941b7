"""Scale-out figures on this machine.

- Partitioned consumers: the same log (4 partitions by rollout) folded by 1, 2 and 4
  ``rollout consumer canary_stats --process K --of M`` processes running at once;
  events/s = events / time from the first publish until every partition is committed.
- Producers: R1 (one embedded server) against R3 (a 3-node cluster on loopback), raw
  batched publish of 100-event msgpack batches with async acks.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.children import consumer_children, durables_exist
from bench.harness import Figure, bench_server
from bench.workload import make_batches, publish_batches
from rollout_engine.consumers.consumer import store_name
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.cluster import EmbeddedCluster
from rollout_engine.events import subjects

__all__ = ["consumer_processes", "producer_replicas", "scale_figures"]

PARTITIONS = 4


async def consumer_processes(processes: int, total: int = 300_000, batch: int = 64) -> float:
    """events/s of ``processes`` partitioned canary_stats processes folding ``total`` events
    (0: one unpartitioned process on an unpartitioned log, the default set-up).

    The processes start first and wait on an empty log; the clock runs from the first
    publish until every partition's durable consumer has nothing pending or unacked
    (acks follow the commit), so process start-up is not counted.
    """
    partitions = PARTITIONS if processes else 0
    async with bench_server(partitions=partitions, consumer_batch=batch) as (server, settings, _, js):
        owners = [["--process", str(k), "--of", str(processes)] for k in range(processes)] or [[]]
        async with consumer_children(server.url or "", settings.data_dir, "canary_stats", owners,
                                     ["--batch", str(batch)]):
            durables = [store_name("canary_stats", p) for p in range(partitions)] or ["canary_stats"]
            await _wait(lambda: durables_exist(js, durables), 60, "the consumer processes to start")
            batches = list(make_batches(total, rollouts=32))
            start = time.perf_counter()
            await publish_batches(js, batches)
            await _wait(lambda: _caught_up(js, durables), 300, "the consumers to fold the log")
            elapsed = time.perf_counter() - start
        return total / elapsed


async def _wait(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _caught_up(js: Any, durables: list[str]) -> bool:
    for name in durables:
        info = await js.consumer_info(subjects.LOG_STREAM, name)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def producer_replicas(nodes: int, total: int = 200_000) -> float:
    """Producer events/s into the log on one server (R1) or a ``nodes``-node cluster (R3)."""
    batches = list(make_batches(total, rollouts=32))
    with tempfile.TemporaryDirectory(prefix="rollout-bench-scale-") as tmp:
        if nodes == 1:
            async with bench_server() as (_, _, _, js):
                start = time.perf_counter()
                await publish_batches(js, batches)
                return total / (time.perf_counter() - start)
        cluster = EmbeddedCluster(Path(tmp) / "cluster", nodes)
        await asyncio.to_thread(cluster.start)
        try:
            settings = load_settings(env={}, nats_url=cluster.url, replicas=min(3, nodes), data_dir=f"{tmp}/data")
            nc = await connect(settings, name="bench-scale")
            js = nc.jetstream()
            await provision(js, settings)
            await js.publish(subjects.TICK, b"")  # the stream has a leader and takes writes
            start = time.perf_counter()
            await publish_batches(js, batches)
            rate = total / (time.perf_counter() - start)
            await nc.close()
            return rate
        finally:
            await asyncio.to_thread(cluster.stop)


def _figure(name: str, unit: str, values: list[float], **meta: object) -> Figure:
    ordered = sorted(values)
    return Figure(name, unit, ordered[len(ordered) // 2], ordered[0], ordered[-1], values, **meta)  # type: ignore[arg-type]


async def scale_figures(repeat: int = 3) -> list[Figure]:
    """1, 2 and 4 consumer processes over 4 partitions; R1 against R3 producers."""
    whole = _figure("canary_stats, 1 process on an unpartitioned log (same method)", "events/s",
                    [await consumer_processes(0) for _ in range(repeat)],
                    note="publish start to all committed; 300,000 events, 32 rollouts")
    figures: list[Figure] = [whole]
    one: float | None = None
    for processes in (1, 2, 4):
        runs = [await consumer_processes(processes) for _ in range(repeat)]
        figure = _figure(f"partitioned canary_stats, {processes} process{'es' if processes > 1 else ''} "
                         f"x {PARTITIONS // processes} partitions (2 cores)", "events/s", runs,
                         reference="1 process" if one else "", reference_value=one,
                         note="publish start to all committed; 300,000 events, 32 rollouts")
        one = one or figure.median
        figures.append(figure)
    r1_runs: list[float] = []
    r3_runs: list[float] = []
    for _ in range(repeat):  # interleaved, so a busy moment of the machine hits both alike
        r1_runs.append(await producer_replicas(1))
        r3_runs.append(await producer_replicas(3))
    r1 = _figure("producer into R1 (one server), 100-event batches", "events/s", r1_runs)
    r3 = _figure("producer into R3 (3-node cluster on loopback), 100-event batches", "events/s", r3_runs,
                 reference="R1", reference_value=r1.median)
    return [*figures, r1, r3]


if __name__ == "__main__":
    for fig in asyncio.run(scale_figures(1)):
        print(f"{fig.name}: {fig.median:,.0f} {fig.unit} ({fig.low:,.0f}-{fig.high:,.0f})")
