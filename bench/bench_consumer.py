"""The consumer figures of ``make bench``: events/s from the stream to the committed canary-stats projection
(one consumer, the real runtime: durable pull, fold, one SQLite commit per batch, acks),
beside the transport ceiling measured on the same stream in the same run; and resident
memory with 10,000 active rollouts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from bench.bench_reference import drain_raw
from bench.harness import bench_server
from bench.workload import make_batches, publish_batches
from rollout_engine.consumers import registry
from rollout_engine.engine.stack.consumer_runner import consumer_runner

__all__ = ["consumer_vs_ceiling", "memory_10k_rollouts"]


async def consumer_vs_ceiling(total: int = 300_000, name: str = "canary_stats", batch: int = 64) -> tuple[float, float]:
    """(consumer events/s to committed state, ceiling events/s) over one stream."""
    async with bench_server(consumer_batch=batch) as (_, settings, nc, js):
        await publish_batches(js, list(make_batches(total)))
        ceiling = await drain_raw(js, total, "ceiling")
        runner = consumer_runner(registry.build(name, settings), settings, nc=nc, until_idle=True)
        start = time.perf_counter()
        summary = await runner.run()
        elapsed = time.perf_counter() - start
        assert summary.events >= total, f"folded {summary.events} of {total}"
        return summary.events / elapsed, ceiling


_MEMORY_SCRIPT = """
import json, sys
from bench.workload import make_batches
from rollout_engine.consumers.canary_stats import CanaryStats
stats = CanaryStats()
seq = 0
for _, _, batch in make_batches(int(sys.argv[1]), rollouts=int(sys.argv[2])):
    for event in batch:
        seq += 1
        stats.apply(event, seq)
snapshot = stats.snapshot()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big bench
# process would report its parent's peak (measured: 343 MB here vs 195 MB alone)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mb": hwm / 1024,
                  "rollouts": len(stats.rollouts), "snapshot_mb": len(snapshot) / 1e6}))
"""


async def memory_10k_rollouts(rollouts: int = 10_000, events_per_rollout: int = 300) -> dict[str, float]:
    """Peak RSS of a process folding ``rollouts`` active rollouts (every window full)."""
    total = rollouts * events_per_rollout
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _MEMORY_SCRIPT, str(total), str(rollouts)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


if __name__ == "__main__":
    print(asyncio.run(consumer_vs_ceiling()))
    print(asyncio.run(memory_10k_rollouts()))
