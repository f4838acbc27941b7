"""The benchmark groups of ``make bench``: each returns figures with their references."""

from __future__ import annotations

import asyncio

from bench.bench_reference import eventsourcing_peer, naive_design, transport_ceiling
from bench.harness import Figure, measure

__all__ = ["reference"]

REPEAT = 3
_cache: dict[str, Figure] = {}


async def reference() -> list[Figure]:
    """The three references every throughput figure is compared with."""
    ceiling = await measure("transport ceiling: fetch + decode, no projection", "events/s",
                            lambda: transport_ceiling(200_000), REPEAT)
    naive = await measure("naive design: 1 msg, 1 ack, 1 SQLite commit per event", "events/s",
                          lambda: naive_design(20_000), REPEAT)
    peer_runs = [await asyncio.to_thread(eventsourcing_peer, 100_000) for _ in range(REPEAT)]
    write = sorted(r["write_events_per_s"] for r in peer_runs)
    read = sorted(r["project_events_per_s"] for r in peer_runs)
    peer_write = Figure("eventsourcing peer: record, 100 events per save", "events/s",
                        write[len(write) // 2], write[0], write[-1], write)
    peer_read = Figure("eventsourcing peer: project its notification log", "events/s",
                       read[len(read) // 2], read[0], read[-1], read)
    for figure in (ceiling, naive, peer_write, peer_read):
        _cache[figure.name] = figure
    return [ceiling, naive, peer_write, peer_read]


def cached(prefix: str) -> Figure | None:
    """A reference measured earlier in this run (groups run in order)."""
    return next((f for name, f in _cache.items() if name.startswith(prefix)), None)


async def replay() -> list[Figure]:
    """Replay speed from an export file through every registered projection (bench/bench_replay.py)."""
    from bench.bench_replay import replay_figures

    figures = await replay_figures(200_000, REPEAT)
    ceiling = cached("transport ceiling")
    for figure in figures:
        if ceiling is not None:
            figure.reference, figure.reference_value = ceiling.name, ceiling.median
    return figures
