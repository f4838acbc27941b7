"""Many rollouts, little memory: resting rollouts (consumers/resident.py) under a flood of new ids.

What is measured, with the ``canary_stats`` and ``rollback`` consumers running as
``rollout consumer NAME`` processes (as ``rollout up`` runs them) beside one nats-server:

1. ``rollouts`` rollout ids get 51 events each (17 decisions, 17 outcomes, 17 latency
   samples, baseline and candidate), published kind by kind across all rollouts, so each
   rollout is touched three times, far apart (a rested one is loaded again); then the log
   is idle. The clock runs from the first publish until both consumers have nothing
   pending or unacked.
2. Resident memory of each consumer process after the flood (``VmRSS``) and its peak
   (``VmHWM``), and the nats-server's.
3. ``kills`` rollouts got 237 events of a quality regression before the flood (29 bad
   candidate samples, one short of the default policy's minimum), so they rest once the
   flood has passed; then the 30th sample is published and the time until a subscriber
   receives the KillSwitch is taken: the rollback consumer loads the rollout from SQLite,
   folds the sample and kills.

4. ``small`` rollouts flooded the same way, both consumers stopped (SIGTERM) and started
   again on the same stores: the KV puts of that restart (``$KV.ro_state.>`` counted by a
   core subscription), beside the first run's. A restart puts only the rollouts its store
   lists as committed and not put (consumers/unmirrored.py); it used to put every one,
   loading each resting rollout to make its value.

The per-rollout bytes of the rollback consumer come from three runs: capped at
``cap`` with ``small`` and ``rollouts`` ids (the slope is the cost of a resting rollout)
and uncapped with ``small`` ids (the difference is the cost of an active one).

Run alone: ``.venv/bin/python -m bench.bench_resting --rollouts 100000`` (add ``--restart`` for 4).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench.bench_scale import _caught_up, _wait
from bench.children import durables_exist, named_children
from bench.harness import Figure, bench_server
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.events import Decision, Metric, Outcome, encode, encode_batch, kind_of, subjects
from rollout_engine.events.message import log_messages

__all__ = ["flood_run", "resting_figures"]

NAMES = ("canary_stats", "rollback")
T0 = 1_700_000_000_000
PER_KIND = 17
_MARK = "R" * 7
TRIGGER_AT = 237  # the outcome of the 30th bad candidate run: the default policy's quality guard concludes


def _templates() -> list[tuple[str, bytes]]:
    """One message per kind, encoded once with a 7-character placeholder rollout id (the
    flood swaps in ``r000000``...: same length, so the msgpack stays valid)."""
    out = []
    for kind in ("decision", "outcome", "metric"):
        batch: list[Any] = []
        for i in range(PER_KIND):
            variant = "candidate" if i % 3 == 0 else "baseline"
            common = {"id": f"{kind[0]}{i:02d}", "rollout": _MARK, "time_ms": T0 + i * 10, "producer": "bench"}
            if kind == "decision":
                batch.append(Decision(unit=f"u{i}", variant=variant, reason="canary", canary_pct=33.0,
                                      config_version=1, propensity=0.33, **common))
            elif kind == "outcome":
                batch.append(Outcome(decision_id=f"d{i:02d}", variant=variant, verdict="win", quality=90.0 + i % 5,
                                     **common))
            else:
                batch.append(Metric(variant=variant, name="latency_ms", value=100.0 + i, **common))
        out.append((kind, encode_batch(batch)))
    return out


async def _flood(js: Any, rollouts: int) -> None:
    """Every event template once for each of ``rollouts`` rollout ids, then wait until every
    consumer has folded them."""
    for kind, template in _templates():
        for i in range(rollouts):
            rollout = f"r{i:06d}"
            await js.publish_async(subjects.event(rollout, kind), template.replace(_MARK.encode(), rollout.encode()))
    await js.publish_async_completed()
    await _wait(lambda: _caught_up(js, list(NAMES)), 900, "the consumers to fold the flood")


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def flood_run(rollouts: int, cap: int, kills: int = 5) -> dict[str, Any]:
    """One flood of ``rollouts`` ids with ``resident_rollouts = cap`` (0: all in memory)."""
    async with bench_server() as (server, settings, nc, js), \
            named_children(server.url or "", settings.data_dir, NAMES, _env(cap)) as procs:
        await _wait(lambda: durables_exist(js, list(NAMES)), 60, "the consumer processes to start")
        breaches = {f"kill-{k}": runs(f"kill-{k}", 60, canary_pct=50, candidate=Profile(quality=82.0))
                    for k in range(kills)}
        start = time.perf_counter()
        for events in breaches.values():
            for subject, payload in log_messages(events[:TRIGGER_AT], 100):
                await js.publish_async(subject, payload)
        await _flood(js, rollouts)
        fold_s = time.perf_counter() - start
        await asyncio.sleep(2.0)  # idle: the KV mirrors' last rounds
        rss = {name: _rss_mb(proc.pid) for name, proc in procs.items()}
        rss["nats-server"] = _rss_mb(server.process.pid) if server.process else (0.0, 0.0)
        latencies = await _kill_latencies(nc, breaches)
    return {"rollouts": rollouts, "cap": cap, "fold_s": fold_s, "events": rollouts * 3 * PER_KIND,
            "rss_mb": {k: v[0] for k, v in rss.items()}, "hwm_mb": {k: v[1] for k, v in rss.items()},
            "kill_ms": latencies}


def _env(cap: int) -> dict[str, str]:
    """The consumer children's settings: at most ``cap`` rollouts in memory (0: all)."""
    return {"ROLLOUT_RESIDENT_ROLLOUTS": str(cap)}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _quiet(counts: dict[str, int], quiet_s: float, timeout: float) -> float:
    """Wait until no KV put was seen for ``quiet_s``; the seconds until the last put."""
    start = time.perf_counter()
    last_total, last_change = -1, start
    while time.perf_counter() - last_change < quiet_s:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"KV puts still flowing after {timeout:.0f} s: {counts}")
        total = sum(counts.values())
        if total != last_total:
            last_total, last_change = total, time.perf_counter()
        await asyncio.sleep(0.05)
    return last_change - start


async def restart_run(rollouts: int, cap: int, quiet_s: float = 3.0) -> dict[str, Any]:
    """``rollouts`` ids flooded (as :func:`flood_run`), consumers stopped (SIGTERM) and started
    again on the same stores and log: the KV puts of the first run and of that restart, per
    KV kind, the seconds from the restart to its last put, and the CPU seconds each consumer
    process spent (imports and restore included) until ``quiet_s`` passed without a put."""
    async with bench_server() as (server, settings, nc, js):
        counts: dict[str, int] = {}

        async def on_put(msg: Msg) -> None:
            kind = msg.subject.split(".")[2]
            counts[kind] = counts.get(kind, 0) + 1

        sub = await nc.subscribe(f"$KV.{subjects.STATE_BUCKET}.>", cb=on_put)
        try:
            async with named_children(server.url or "", settings.data_dir, NAMES, _env(cap)):
                await _wait(lambda: durables_exist(js, list(NAMES)), 60, "the consumer processes to start")
                await _flood(js, rollouts)
                await _quiet(counts, quiet_s, 900)  # the first run's last rounds
                first = dict(counts)
            for name in NAMES:  # made again by each process once it has started (after its mirror's first round)
                await js.delete_consumer(subjects.LOG_STREAM, name)
            counts.clear()
            started = time.perf_counter()
            async with named_children(server.url or "", settings.data_dir, NAMES, _env(cap)) as procs:
                await _wait(lambda: durables_exist(js, list(NAMES)), 60, "the consumer processes to start again")
                waited = time.perf_counter() - started
                puts_s = waited + await _quiet(counts, quiet_s, 900)
                cpu = {name: _cpu_s(proc.pid) for name, proc in procs.items()}
        finally:
            await sub.unsubscribe()
    return {"rollouts": rollouts, "cap": cap, "first_run_puts": first, "puts": dict(counts),
            "puts_s": puts_s if counts else 0.0, "cpu_s": cpu}


async def _kill_latencies(nc: Any, breaches: dict[str, list[Any]]) -> list[float]:
    """Publish each resting rollout's conclusive sample; ms until its KillSwitch is received."""
    received: dict[str, asyncio.Event] = {rollout: asyncio.Event() for rollout in breaches}

    async def on_kill(msg: Msg) -> None:
        rollout = subjects.parse(msg.subject).rollout or ""
        if rollout in received:
            received[rollout].set()

    sub = await nc.subscribe(subjects.control_filter(command="kill_switch"), cb=on_kill)
    out = []
    try:
        for rollout, events in breaches.items():
            trigger = events[TRIGGER_AT]
            t0 = time.perf_counter()
            await nc.publish(subjects.event(rollout, kind_of(trigger)), encode(trigger))
            await asyncio.wait_for(received[rollout].wait(), 30)
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        await sub.unsubscribe()
    return out


def per_rollout_bytes(capped_small: dict[str, Any], capped_large: dict[str, Any],
                      whole_small: dict[str, Any], name: str = "rollback") -> tuple[float, float]:
    """(bytes per active rollout, bytes per resting rollout) of consumer ``name`` from three runs."""
    mb = 1024 * 1024
    resting = (capped_large["rss_mb"][name] - capped_small["rss_mb"][name]) * mb / (
        capped_large["rollouts"] - capped_small["rollouts"])
    small, cap = capped_small["rollouts"], capped_small["cap"]
    active = resting + (whole_small["rss_mb"][name] - capped_small["rss_mb"][name]) * mb / max(1, small - cap)
    return active, resting


async def resting_figures(rollouts: int = 100_000, small: int = 20_000, cap: int = 10_000) -> list[Figure]:
    """The figures of ``make bench`` (group ``resting``): see the module docstring."""
    large = await flood_run(rollouts, cap)
    restart = await restart_run(small, cap)
    capped_small = await flood_run(small, cap)
    whole_small = await flood_run(small, 0)
    active, resting = per_rollout_bytes(capped_small, large, whole_small)
    both = large["rss_mb"]["canary_stats"] + large["rss_mb"]["rollback"]
    whole_both = whole_small["rss_mb"]["canary_stats"] + whole_small["rss_mb"]["rollback"]
    note = (f"{rollouts:,} rollouts x {3 * PER_KIND} events then idle, resident_rollouts = {cap:,}; "
            f"consumers as processes; folded in {large['fold_s']:.0f} s")
    extra = {run_name: run for run_name, run in (("capped", large), ("capped_small", capped_small),
                                                 ("all_in_memory_small", whole_small), ("restart", restart))}
    kills = large["kill_ms"]

    def one(name: str, unit: str, value: float, **meta: Any) -> Figure:
        return Figure(name, unit, value, value, value, [value], note=note, extra=extra, **meta)

    return [
        one(f"canary_stats + rollback RSS, {rollouts:,} rollouts at rest", "MB", both, target="< 1,024 MB",
            reference=f"same, {small:,} rollouts all in memory (resident_rollouts = 0)", reference_value=whole_both),
        one(f"canary_stats RSS, {rollouts:,} rollouts at rest", "MB", large["rss_mb"]["canary_stats"],
            reference=f"{small:,} all in memory", reference_value=whole_small["rss_mb"]["canary_stats"]),
        one(f"rollback RSS, {rollouts:,} rollouts at rest", "MB", large["rss_mb"]["rollback"],
            reference=f"{small:,} all in memory", reference_value=whole_small["rss_mb"]["rollback"]),
        one("rollback: bytes per active rollout (in memory)", "bytes", active),
        one("rollback: bytes per resting rollout (in its SQLite store)", "bytes", resting),
        one(f"KV puts when canary_stats + rollback restart after a clean stop, {small:,} rollouts", "puts",
            sum(restart["puts"].values()), target="0 (only rollouts committed and not put: consumers/unmirrored.py)",
            reference="the first run's puts (one per rollout and consumer: what every restart put before)",
            reference_value=sum(restart["first_run_puts"].values())),
        Figure("kill switch of a resting rollout: conclusive sample -> KillSwitch received", "ms",
               statistics.median(kills), min(kills), max(kills), kills, note=note, target="<= 50 ms"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--cap", type=int, default=10_000, help="resident_rollouts (0: every rollout in memory)")
    parser.add_argument("--restart", action="store_true", help="measure the KV puts of a restart (restart_run)")
    args = parser.parse_args()
    result = asyncio.run((restart_run if args.restart else flood_run)(args.rollouts, args.cap))
    print(result)


if __name__ == "__main__":
    main()
