"""The benchmark groups of ``make bench``: each returns figures with their references."""

from __future__ import annotations

import asyncio

from bench.bench_reference import naive_design, transport_ceiling
from bench.harness import Figure, measure

__all__ = ["bandit", "consumer", "judgement", "memory", "propagation", "reference", "restart", "resting", "rollback",
           "scale", "sdk", "status"]

REPEAT = 3
_cache: dict[str, Figure] = {}


async def reference() -> list[Figure]:
    """The three references every throughput figure is compared with."""
    ceiling = await measure("transport ceiling: fetch + decode, no projection", "events/s",
                            lambda: transport_ceiling(200_000), REPEAT)
    naive = await measure("naive design: 1 msg, 1 ack, 1 SQLite commit per event", "events/s",
                          lambda: naive_design(20_000), REPEAT)
    from bench.peer_eventsourcing import eventsourcing_peer

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
    """Replay speed from an export file through every registered projection, the folds alone,
    and decoding alone (bench/bench_replay.py)."""
    from bench.bench_replay import decode_figures, fold_figures, replay_figures

    decodes = await decode_figures(200_000, 5)
    folds = await fold_figures(100_000, REPEAT)
    figures = await replay_figures(200_000, REPEAT)
    ceiling = cached("transport ceiling")
    for figure in figures:
        if ceiling is not None and not figure.reference:  # the one-process fold stands beside its no-dedupe twin
            figure.reference, figure.reference_value = ceiling.name, ceiling.median
    return decodes + folds + figures


async def sdk() -> list[Figure]:
    """The SDK: assign() calls/s and JetStream-acked producer events/s (targets 200k each)."""
    from bench.bench_sdk import assign_rate, evidence_us, publish_rate, sign_us, verify_us

    ceiling = cached("transport ceiling")
    assign = await measure("SDK assign(): hash, choose, build + buffer the Decision", "calls/s",
                           lambda: assign_rate(500_000), REPEAT, target=">= 200,000")
    publish = await measure("SDK producer: decisions acked by JetStream (250/batch)", "events/s",
                            lambda: publish_rate(1_000_000), REPEAT, target=">= 200,000",
                            reference="transport ceiling" if ceiling else "",
                            reference_value=ceiling.median if ceiling else None)
    # Signed control commands (engine/sdk/signatures.py): paid once per command, not per assign().
    sign = await measure("engine: sign one control command (Ed25519)", "µs", lambda: sign_us(5_000), REPEAT)
    verify = await measure("SDK: verify one control command before applying it", "µs",
                           lambda: verify_us(5_000), REPEAT)
    # A kill's evidence (consumers/rollback/proof.py): paid once per kill, never per sample.
    evidence = await measure("engine: name one kill's evidence (2 windows x 100 samples: seqs, digest, marks)", "µs",
                             lambda: evidence_us(500), REPEAT)
    return [assign, publish, sign, verify, evidence]


async def bandit() -> list[Figure]:
    """The bandit: choose() calls/s and the bandit and verification folds' events/s."""
    from bench.bench_bandit import (
        bandit_events_per_s,
        choose_calls_per_s,
        verification_events_per_s,
    )

    return [
        await measure("bandit choose(): local Thompson draw + Decision", "calls/s",
                      lambda: choose_calls_per_s(200_000), REPEAT),
        await measure("bandit projection fold", "events/s", lambda: bandit_events_per_s(200_000), REPEAT),
        await measure("verification projection fold", "events/s",
                      lambda: verification_events_per_s(200_000), REPEAT),
    ]


async def rollback() -> list[Figure]:
    """The rollback consumer: breach -> kill switch p50/p99 under 50,000 events/s of background load,
    quiet and with one CPU-bound neighbour process per core."""
    from bench.bench_rollback import rollback_figures

    return await rollback_figures(100, 50_000)


async def consumer() -> list[Figure]:
    """One consumer process, stream -> committed canary-stats projection (target 200,000 events/s)."""
    from bench.bench_consumer import consumer_vs_ceiling

    runs = [await consumer_vs_ceiling(300_000) for _ in range(REPEAT)]
    rates = sorted(r[0] for r in runs)
    ceilings = sorted(r[1] for r in runs)
    median_ceiling = ceilings[len(ceilings) // 2]
    naive = cached("naive design")
    peer = cached("eventsourcing peer: project")
    figures = [
        Figure("canary_stats consumer: stream -> committed projection", "events/s", rates[len(rates) // 2],
               rates[0], rates[-1], rates, target=">= 200,000 and >= 25% of ceiling",
               reference="transport ceiling, same stream", reference_value=median_ceiling),
    ]
    if naive:
        figures.append(Figure("canary_stats consumer vs naive design", "events/s", rates[len(rates) // 2],
                              rates[0], rates[-1], rates, target=">= 10x naive",
                              reference="naive design", reference_value=naive.median))
    if peer:
        figures.append(Figure("canary_stats consumer vs eventsourcing peer", "events/s", rates[len(rates) // 2],
                              rates[0], rates[-1], rates, target="ahead of the peer",
                              reference="eventsourcing peer projection", reference_value=peer.median))
    return figures


async def memory() -> list[Figure]:
    """Resident memory of the canary-stats fold with 10,000 active rollouts (target < 300 MB)."""
    from bench.bench_consumer import memory_10k_rollouts

    runs = [await memory_10k_rollouts() for _ in range(2)]
    rss = sorted(r["rss_mb"] for r in runs)
    return [Figure("canary_stats: peak RSS with 10,000 active rollouts (300 events each)", "MB",
                   rss[len(rss) // 2], rss[0], rss[-1], rss, target="< 300 MB",
                   extra={"snapshot_mb": runs[-1]["snapshot_mb"]})]


async def resting() -> list[Figure]:
    """100,000 rollouts x 51 events then idle: canary_stats + rollback RSS with resting rollouts,
    the rollback consumer's bytes per active and per resting rollout, the kill switch of
    a resting rollout, and the KV puts of a restart (bench/bench_resting.py)."""
    from bench.bench_resting import resting_figures

    return await resting_figures()


async def restart() -> list[Figure]:
    """Every consumer killed at once -> the rollback consumer folding again (5 rounds, warm and cold)."""
    from bench.bench_restart import restart_figures

    return await restart_figures(5)


async def scale() -> list[Figure]:
    """Scale-out: 1, 2 and 4 partitioned consumer processes; R1 against R3 producers."""
    from bench.bench_scale import scale_figures

    return await scale_figures(REPEAT)


async def propagation() -> list[Figure]:
    """Kill-switch propagation to 200 SDK instances (4 processes x 50), R1 and a 3-node cluster."""
    from bench.bench_propagation import propagation_figures

    return await propagation_figures()


async def judgement() -> list[Figure]:
    """Judgement quality: false kills, power and time to kill of the rollback presets and of
    each statistical option, from the simulator (bench/bench_judgement.py)."""
    from bench.bench_judgement import judgement_figures

    return await asyncio.to_thread(judgement_figures)


async def status() -> list[Figure]:
    """``status`` at 100,000 rollouts: index build, pages, the CLI; the listing as it was for reference."""
    from bench.bench_status import status_figures

    return await status_figures()
