"""The load soak of ``make soak``: consumers at 80% of their measured capacity for 10 minutes.

Why: a throughput figure from a 10-second benchmark says nothing about a leak or a lag
that grows by a few events per second. This runs the real consumer processes
(``rollout consumer NAME``, default ``canary_stats`` and ``rollback``) against a private
nats-server, and:

1. measures their capacity: with the consumers started and idle, a backlog is published
   as fast as possible and capacity = backlog / time until every one has caught up;
2. produces at ``fraction`` (0.8) of that capacity for ``minutes``, in the SDK's
   100-event batches with fresh ids and current event times, plus an engine tick every
   250 ms, as ``rollout up`` would;
3. samples every ``every`` seconds each consumer's resident memory (``/proc/PID/status``)
   and lag (``num_pending + num_ack_pending`` of its durable JetStream consumer);
4. reports start / end (medians of the first and last 10% of samples after a warm-up)
   and the least-squares slope of each, and calls the run flat when memory grows less
   than ``max_rss_growth_mb`` and the lag ends below one second of traffic (lag is counted in messages: 100-event
   batches and ticks).

Results go to ``bench/results/soak.json`` (shorter trial runs: ``soak-trial.json``);
``bench/NOTES.md`` quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import bench_server
from bench.workload import make_batches
from rollout_engine.events import Tick, encode, encode_batch, new_event_id, subjects

__all__ = ["SoakResult", "run_soak", "score"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "soak.json"


@dataclass
class Series:
    """One sampled quantity of one consumer: start, end, slope per minute."""

    start: float
    end: float
    peak: float
    slope_per_min: float


@dataclass
class SoakResult:
    """What ``make soak`` measured and whether memory and lag stayed flat."""

    consumers: list[str]
    capacity_events_per_s: float
    target_events_per_s: float
    produced_events_per_s: float
    minutes: float
    events: int
    rss_mb: dict[str, Series] = field(default_factory=dict)
    lag_messages: dict[str, Series] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    flat: bool = False
    verdict: str = ""


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _lag(js: Any, name: str) -> int:
    """Messages (100-event batches, ticks) not yet folded by ``name``: pending plus delivered-unacked."""
    try:
        info = await js.consumer_info(subjects.LOG_STREAM, name)
    except Exception:  # not created yet
        return -1
    return int(info.num_pending + info.num_ack_pending)


def _pool(batches: int, rollouts: int) -> list[tuple[str, str, list[Any]]]:
    """A pool of the shared workload's batches; re-stamped with new ids and times when sent."""
    return list(make_batches(batches * 100, rollouts=rollouts))


def _stamp(batch: list[Any], now: int) -> bytes:
    replace = msgspec.structs.replace
    return encode_batch([replace(e, id=new_event_id(now), time_ms=now) for e in batch])


async def _publish(js: Any, pool: list[tuple[str, str, list[Any]]], i: int, now: int) -> int:
    rollout, kind, batch = pool[i % len(pool)]
    await js.publish_async(subjects.event(rollout, kind), _stamp(batch, now))
    return len(batch)


async def _tick(js: Any, now: int) -> None:
    tick = Tick(id=new_event_id(now), time_ms=now, producer="soak")
    await js.publish_async(subjects.TICK, encode(tick))


def _start(names: list[str], settings: Any) -> list[subprocess.Popen[bytes]]:
    """One ``rollout consumer NAME`` process each; stderr to a file (a pipe nobody reads
    would fill up and stall the consumer during a long run)."""
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir", settings.data_dir]
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([*cmd, "consumer", name], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=open(Path(settings.data_dir) / f"{name}.log", "wb"))
            for name in names]


async def _caught_up(js: Any, names: list[str], timeout: float) -> float:
    """Seconds until every consumer has nothing pending (or ``timeout``)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        lags = [await _lag(js, n) for n in names]
        if all(lag == 0 for lag in lags):
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"consumers {names} did not catch up within {timeout:.0f}s: lags {lags}")


def _series(points: list[tuple[float, float]]) -> Series:
    """Start / end as medians of the first and last 10% of points (a shared machine's
    transient stall is one sample, not a trend); least-squares slope per minute."""
    values = [v for _, v in points]
    k = max(1, len(points) // 10)
    if len(points) >= 2:
        slope = statistics.linear_regression([t for t, _ in points], values).slope * 60
    else:
        slope = 0.0
    return Series(round(statistics.median(values[:k]), 1), round(statistics.median(values[-k:]), 1),
                  round(max(values), 1), round(slope, 2))


def score(result: SoakResult, warmup: float, max_rss_growth_mb: float) -> SoakResult:
    """Fill in start / end / slope of every consumer's memory and lag from the samples, and the verdict."""
    growth: list[str] = []
    for name in result.consumers:
        rows = [(row["t_s"], row[name]) for row in result.samples if row["t_s"] >= warmup]
        rss = _series([(t, float(v["rss_mb"])) for t, v in rows])
        lag = _series([(t, float(v["lag"])) for t, v in rows])
        result.rss_mb[name], result.lag_messages[name] = rss, lag
        if rss.end - rss.start > max_rss_growth_mb:
            growth.append(f"{name} memory grew {rss.start} -> {rss.end} MB")
        if lag.end > result.target_events_per_s / 100:
            growth.append(f"{name} lag ended at {lag.end:,.0f} messages (> 1 s of traffic)")
    result.flat = not growth
    result.verdict = "flat" if result.flat else "; ".join(growth)
    return result


async def run_soak(minutes: float = 10.0, names: list[str] | None = None, fraction: float = 0.8,
                   backlog: int = 500_000, every: float = 10.0, warmup: float = 30.0,
                   max_rss_growth_mb: float = 20.0) -> SoakResult:
    """Measure capacity, then hold ``fraction`` of it for ``minutes``; sample memory and lag."""
    names = names or ["canary_stats", "rollback"]
    warmup = min(warmup, minutes * 60 / 5)  # a short trial run still keeps most samples
    every = min(every, minutes * 60 / 20)
    pool = _pool(400, rollouts=20)
    async with bench_server() as (_, settings, _nc, js):
        procs = _start(names, settings)
        try:
            await _caught_up(js, names, timeout=60)  # started and bound to the (empty) log
            now = int(time.time() * 1000)
            sent = 0
            begin = time.perf_counter()
            for i in range(backlog // 100):
                sent += await _publish(js, pool, i, now)
            await js.publish_async_completed()
            await _caught_up(js, names, timeout=300)
            capacity = sent / (time.perf_counter() - begin)
            target = capacity * fraction
            print(f"soak: capacity {capacity:,.0f} events/s ({', '.join(names)} together); "
                  f"producing {target:,.0f} events/s for {minutes:g} min", flush=True)
            result = SoakResult(names, round(capacity), round(target), 0.0, minutes, 0)
            start = time.perf_counter()
            last_tick = last_sample = 0.0
            produced, i = 0, backlog // 100
            while (t := time.perf_counter() - start) < minutes * 60:
                now = int(time.time() * 1000)
                due = int(target * t) - produced
                while due >= 100:
                    produced += await _publish(js, pool, i, now)
                    due -= 100
                    i += 1
                if t - last_tick >= 0.25:
                    await _tick(js, now)
                    last_tick = t
                if t - last_sample >= every:
                    last_sample = t
                    row: dict[str, Any] = {"t_s": round(t, 1)}
                    for name, proc in zip(names, procs, strict=True):
                        if proc.poll() is not None:
                            log = (Path(settings.data_dir) / f"{name}.log").read_text(errors="replace")
                            raise RuntimeError(f"consumer {name} exited with {proc.returncode}: {log[-2000:]}")
                        rss, lag = _rss_mb(proc.pid), await _lag(js, name)
                        row[name] = {"rss_mb": round(rss, 1), "lag": lag}
                    result.samples.append(row)
                    print(f"soak: {row}", flush=True)
                await asyncio.sleep(0.01)
            await js.publish_async_completed()
            seconds = time.perf_counter() - start
            result.events, result.produced_events_per_s = produced, round(produced / seconds)
            score(result, warmup, max_rss_growth_mb)
            return result
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


def write(result: SoakResult) -> Path:
    """``bench/results/soak.json`` for a full run (10 minutes or more); ``soak-trial.json`` otherwise."""
    path = RESULTS if result.minutes >= 10 else RESULTS.with_name("soak-trial.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return path


def summary(result: SoakResult) -> str:
    lines = [f"capacity {result.capacity_events_per_s:,.0f} events/s; produced "
             f"{result.produced_events_per_s:,.0f} events/s for {result.minutes:g} min "
             f"({result.events:,} events); verdict: {result.verdict}"]
    for name in result.consumers:
        rss, lag = result.rss_mb[name], result.lag_messages[name]
        lines.append(f"{name}: RSS {rss.start} -> {rss.end} MB (peak {rss.peak}, slope {rss.slope_per_min} MB/min); "
                     f"lag {lag.start:,.0f} -> {lag.end:,.0f} messages (peak {lag.peak:,.0f}, "
                     f"slope {lag.slope_per_min:,.1f}/min)")
    return "\n".join(lines)


def main(minutes: float, names: list[str] | None, fraction: float) -> int:
    try:
        import uvloop

        result = uvloop.run(run_soak(minutes, names, fraction))
    except ImportError:
        result = asyncio.run(run_soak(minutes, names, fraction))
    path = write(result)
    print(summary(result), f"(written to {path.relative_to(ROOT)})", sep="\n", flush=True)
    return 0 if result.flat else 1


if __name__ == "__main__":
    sys.exit(main(float(os.environ.get("SOAK_MINUTES", "10")), None, 0.8))
