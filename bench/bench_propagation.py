"""Kill-switch propagation to a fleet of SDK instances (``make bench``, group ``propagation``).

200 ``RolloutClient`` instances run in 4 processes of 50 (bench/fleet.py). The bench
publishes kill switches (a resume between two, not measured) and watches the
acknowledgements (KV ``ro_acks``) until every instance reports the kill's revision:

* per instance, from the log storing the command to the instance applying it (measured
  by the instance against the command's store time: one clock on this machine), as
  p50, p99 and max over the 200 instances of each kill;
* per kill, from the bench's publish to the last acknowledgement arriving at its watcher
  (what ``rollout wait --for killed --applied`` would wait).

Each figure is the median over the kills with its range. The same fleet is measured
against one server (R1) and against a 3-node cluster (R3 streams and bucket) with the
processes connected to different nodes; one instance alone is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Figure, bench_server
from rollout_engine.engine.api.propagation import watch_acks
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.cluster import EmbeddedCluster
from rollout_engine.events import ControlState, encode, new_event_id, subjects, transitions

__all__ = ["fleet_propagation", "propagation_figures"]

ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = "bench-propagation"
PROCESSES, CLIENTS, KILLS = 4, 50, 8
ACK_TIMEOUT_S = 60.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _start_fleet(urls: list[str], processes: int, clients: int) -> tuple[list[Any], list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fleet", "--nats-url", urls[i % len(urls)], "--clients", str(clients),
        "--service", f"bench{i}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        for i in range(processes)]
    instances: list[str] = []
    for proc in procs:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
        except TimeoutError:
            await _stop_fleet(procs)
            raise RuntimeError(f"a fleet process of {clients} clients was not ready within 180 s") from None
        if not line:
            raise RuntimeError(f"fleet process failed: {(await proc.stderr.read()).decode()[-1500:]}")
        instances += json.loads(line)["instances"]
    return procs, instances


async def _stop_fleet(procs: list[Any]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 60)


async def _command(js: Any, before: ControlState) -> tuple[int, float, ControlState]:
    """Publish a kill (of a live rollout) or a resume at 10% (of a killed one), built by the
    control vocabulary (``events.transitions``) as the API builds it; return its sequence,
    the bench clock before publishing, and the state after it."""
    now = int(time.time() * 1000)
    common = {"id": new_event_id(), "rollout": ROLLOUT, "time_ms": now, "producer": "api", "actor": "bench",
              "reason": "bench"}
    event = (transitions.resume_command(before, 10.0, **common) if before.kill_switch
             else transitions.kill_command(before, **common))
    started = time.perf_counter()
    ack = await js.publish(subjects.for_event(event), encode(event), headers={"Nats-Msg-Id": event.id})
    return int(ack.seq), started, event.after


async def fleet_propagation(urls: list[str], js: Any, processes: int, clients: int, kills: int) -> dict[str, list[float]]:
    """Per kill: p50/p99/max of the instances' apply latency and publish -> last ack (ms)."""
    procs, instances = await _start_fleet(urls, processes, clients)
    expected = set(instances)
    out: dict[str, list[float]] = {"p50": [], "p99": [], "max": [], "last_ack": []}
    try:
        async with watch_acks(js) as queue:
            latest: dict[str, Any] = {}

            async def until_all(seq: int) -> tuple[float, list[float]]:
                arrived: dict[str, float] = {}
                for instance, entry in latest.items():
                    if instance in expected and entry.ack.rollouts.get(ROLLOUT, None) and \
                            entry.ack.rollouts[ROLLOUT].revision >= seq:
                        arrived[instance] = time.perf_counter()
                try:
                    async with asyncio.timeout(ACK_TIMEOUT_S):
                        while len(arrived) < len(expected):
                            entry = await queue.get()
                            if entry is None or entry.ack is None:
                                continue
                            latest[entry.instance] = entry
                            mine = entry.ack.rollouts.get(ROLLOUT)
                            if entry.instance in expected and mine is not None and mine.revision >= seq:
                                arrived.setdefault(entry.instance, time.perf_counter())
                except TimeoutError:
                    raise RuntimeError(f"only {len(arrived)} of {len(expected)} instances acknowledged seq {seq} "
                                       f"within {ACK_TIMEOUT_S:g} s") from None
                latencies = [latest[i].ack.rollouts[ROLLOUT].latency_us / 1000 for i in expected
                             if latest[i].ack.rollouts[ROLLOUT].revision == seq
                             and latest[i].ack.rollouts[ROLLOUT].latency_us is not None]
                return max(arrived.values()), latencies

            seq, _, state = await _command(js, ControlState(canary_pct=0.0, kill_switch=True))  # a resume
            await until_all(seq)
            for _ in range(kills):
                seq, published, state = await _command(js, state)  # the kill
                last, latencies = await until_all(seq)
                out["last_ack"].append((last - published) * 1000)
                out["p50"].append(statistics.median(latencies))
                out["p99"].append(_percentile(latencies, 0.99))
                out["max"].append(max(latencies))
                seq, _, state = await _command(js, state)  # the resume
                await until_all(seq)
                await asyncio.sleep(0.2)  # let the fleet's heartbeats and the servers settle
    finally:
        await _stop_fleet(procs)
    return out


def _figure(name: str, values: list[float], **meta: Any) -> Figure:
    ordered = sorted(values)
    return Figure(name, "ms", statistics.median(ordered), ordered[0], ordered[-1], [round(v, 3) for v in values],
                  **meta)


async def _on_server(processes: int, clients: int, kills: int) -> dict[str, list[float]]:
    async with bench_server() as (server, _, _, js):
        return await fleet_propagation([server.url or ""], js, processes, clients, kills)


async def _on_cluster(processes: int, clients: int, kills: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="rollout-bench-propagation-") as tmp:
        cluster = EmbeddedCluster(Path(tmp) / "cluster", 3)
        await asyncio.to_thread(cluster.start)
        try:
            settings = load_settings(env={}, nats_url=cluster.url, replicas=3, data_dir=f"{tmp}/data")
            nc = await connect(settings, name="bench-propagation")
            try:
                js = nc.jetstream()
                await provision(js, settings)
                await js.publish(subjects.TICK, b"")  # the log has a leader and takes writes
                return await fleet_propagation(cluster.urls, js, processes, clients, kills)
            finally:
                await nc.close()
        finally:
            await asyncio.to_thread(cluster.stop)


async def propagation_figures(kills: int = KILLS) -> list[Figure]:
    """One instance (reference), 200 instances on R1, 200 instances over a 3-node cluster."""
    total = PROCESSES * CLIENTS
    shape = f"{PROCESSES} processes x {CLIENTS} clients"
    one = await _on_server(1, 1, kills)
    r1 = await _on_server(PROCESSES, CLIENTS, kills)
    r3 = await _on_cluster(PROCESSES, CLIENTS, kills)
    ref = statistics.median(one["p50"])
    note = f"median over {kills} kills (range: min-max over kills); instance clock vs the log's store time"
    figures = [_figure("kill applied by 1 SDK instance (reference)", one["p50"], note=note)]
    for label, runs in ((f"R1, {total} SDK instances ({shape})", r1),
                        (f"R3 3-node cluster, {total} SDK instances ({shape}, spread over the nodes)", r3)):
        figures += [
            _figure(f"kill applied, p50 of instances: {label}", runs["p50"], note=note,
                    reference="1 instance", reference_value=ref),
            _figure(f"kill applied, p99 of instances: {label}", runs["p99"], note=note),
            _figure(f"kill applied, slowest instance: {label}", runs["max"], note=note),
            _figure(f"kill publish -> last acknowledgement seen: {label}", runs["last_ack"],
                    note="bench clock: before js.publish to the last report arriving at a KV watcher"),
        ]
    return figures


if __name__ == "__main__":
    for fig in asyncio.run(propagation_figures(3)):
        print(f"{fig.name}: {fig.median:.2f} ms ({fig.low:.2f}-{fig.high:.2f})")
