"""Replay speed: events per second from an export file through every registered projection.

``rollout replay FILE`` reads a verified export (checksum included in the timing), decodes
each message and folds it into every projection, the work shared by one process per CPU
(``Replayer.feed_parallel``: whole projections, and the rollback fold's rollouts,
``engine.logtools.replay_split``); the one-process figure is measured beside it, and beside
that the one-process fold without de-duplication by event id (``consumers.dedupe``), the
cost of the seen set as a same-run reference. The workload is the shared
synthetic one (``bench.workload``), 100-event msgpack batches as the SDK publishes them.
Targets: at least 250,000 events/s in one process, 400,000 with the parallel mode.

Beside it, the rollback consumer's fold alone in microseconds per event (decoded events,
no de-duplication, the commands it emits folded back as the runtime does), target
2.5 us, with the canary_stats fold timed in the same run as its reference: the rollback
fold contains a canary-stats fold of its own, so the ratio of the two is what the
judging costs, and it survives a busy machine better than either figure alone.

And what every reader of the log pays before any fold: ``events.decode_from_log`` in
microseconds per event (msgspec's decode plus the id, value and subject checks), with
msgspec's decode alone of the same messages timed in the same run as its reference.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec

from bench.harness import Figure, measure
from bench.workload import make_batches
from rollout_engine.consumers.projection import Projection
from rollout_engine.engine.logtools.export import write_export
from rollout_engine.engine.logtools.replay import (
    Replayer,
    make_projections,
    messages_from_file,
    replay_parallel,
)
from rollout_engine.events import (
    AnyEvent,
    Event,
    LogMessage,
    decode_from_log,
    encode_batch,
    subjects,
)

__all__ = ["decode_figures", "decode_us_per_event", "fold_figures", "fold_us_per_event", "replay_events_per_s",
           "replay_figures"]

TARGET = "≥ 250,000 events/s"
PARALLEL_TARGET = "≥ 400,000 events/s"
FOLD_TARGET = "≤ 2.5 µs"


async def _messages(total: int) -> AsyncIterator[LogMessage]:
    for seq, (rollout, kind, events) in enumerate(make_batches(total), 1):
        yield LogMessage(seq, subjects.event(rollout, kind), encode_batch(events), events[0].time_ms)


def replay_events_per_s(path: Path, names: list[str] | None = None, parallel: bool = True,
                        dedupe: bool = True) -> tuple[float, dict[str, str]]:
    """Read, verify and replay ``path`` through the projections; (events/s, digests).

    ``parallel`` folds the projections in one process per CPU as ``rollout replay FILE``
    does (engine/logtools/replay.py ``Replayer.feed_parallel``); otherwise in this process only.
    ``dedupe=False`` folds without the seen set (the reference for its cost)."""
    start = time.perf_counter()
    _footer, messages = messages_from_file(path)
    projections = make_projections(names)
    if parallel:
        result = replay_parallel(messages, projections)
    else:
        result = Replayer(projections, dedupe=dedupe).feed(messages).result()
    return result.events / (time.perf_counter() - start), result.digests


def fold_us_per_event(projection: Projection, events: list[Event]) -> float:
    """Microseconds per event to fold ``events`` into ``projection`` (what it emits is
    folded back into it, as the runtime does with the commands it publishes)."""
    start = time.process_time()  # CPU time: the fold is one thread of pure CPU, and the host is shared
    for seq, event in enumerate(events, 1):
        for command in projection.apply(event, seq):
            projection.apply(command, seq)
    return (time.process_time() - start) / len(events) * 1e6


async def fold_figures(total: int = 100_000, repeat: int = 3) -> list[Figure]:
    """The rollback fold in µs per event on the bench workload, beside the canary_stats
    fold of the same run (alternated, so both see the same machine)."""
    events = [event for _rollout, _kind, batch in make_batches(total) for event in batch]
    rollback: list[float] = []
    stats: list[float] = []
    for _ in range(repeat):
        rollback.append(fold_us_per_event(make_projections(["rollback"])[0], events))
        stats.append(fold_us_per_event(make_projections(["canary_stats"])[0], events))
    note = f"{total:,} decoded bench events, one process, no de-duplication, CPU time of the fold"
    reference = Figure("canary_stats fold, µs per event on the bench workload", "µs", statistics.median(stats),
                       min(stats), max(stats), stats, note=note)
    return [Figure("rollback fold, µs per event on the bench workload", "µs", statistics.median(rollback),
                   min(rollback), max(rollback), rollback, target=FOLD_TARGET, note=note,
                   reference=reference.name, reference_value=reference.median), reference]


def decode_us_per_event(decode: Callable[[str, bytes], object], messages: list[tuple[str, bytes]],
                        events: int) -> float:
    """Microseconds of CPU per event to run ``decode(subject, data)`` over ``messages``."""
    start = time.process_time()
    for subject, data in messages:
        decode(subject, data)
    return (time.process_time() - start) / events * 1e6


async def decode_figures(total: int = 200_000, repeat: int = 3) -> list[Figure]:
    """``decode_from_log`` in µs per event on the bench workload's messages, beside msgspec's
    decode alone of the same messages (alternated, so both see the same machine): the
    difference is what the contract's checks cost a reader of the log."""
    messages = [(subjects.event(rollout, kind), encode_batch(events)) for rollout, kind, events in make_batches(total)]
    if any(decode_from_log(subject, data)[1] for subject, data in messages):
        raise AssertionError("the bench workload must decode without rejects")
    raw = msgspec.msgpack.Decoder(list[AnyEvent])
    checked: list[float] = []
    alone: list[float] = []
    for _ in range(repeat):
        checked.append(decode_us_per_event(decode_from_log, messages, total))
        alone.append(decode_us_per_event(lambda _subject, data: raw.decode(data), messages, total))
    note = f"{total:,} bench events in 100-event msgpack batches, one process, CPU time"
    reference = Figure("msgspec decode alone of the same messages, µs per event", "µs", statistics.median(alone),
                       min(alone), max(alone), alone, note=note)
    return [Figure("decode_from_log (decode + id, value and subject checks), µs per event", "µs",
                   statistics.median(checked), min(checked), max(checked), checked, note=note,
                   reference=reference.name, reference_value=reference.median), reference]


async def replay_figures(total: int = 200_000, repeat: int = 3) -> list[Figure]:
    """``make bench`` group: replay speed from a file through all projections, as
    ``rollout replay`` runs it (one process per CPU) and in one process, with the digests
    of both checked equal."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.msgpack"
        await write_export(_messages(total), path)
        names = [p.name for p in make_projections()]
        digests: list[dict[str, str]] = []

        def runner(parallel: bool, dedupe: bool = True) -> Callable[[], Awaitable[float]]:
            async def once() -> float:
                rate, got = await asyncio.to_thread(replay_events_per_s, path, None, parallel, dedupe)
                digests.append(got)
                return rate
            return once

        note = f"{total:,} events in 100-event batches; checksum verified; one decode per message per process"
        figures = [
            await measure(f"replay from a file through all projections ({', '.join(names)}), "
                          f"{os.cpu_count()} processes as rollout replay runs it", "events/s",
                          runner(True), repeat, target=PARALLEL_TARGET, note=note),
        ]
        reference = await measure("replay from a file through all projections, one process, no de-duplication "
                                  "by event id", "events/s", runner(False, dedupe=False), repeat, note=note)
        figures.append(await measure("replay from a file through all projections, one process", "events/s",
                                     runner(False), repeat, target=TARGET, note=note,
                                     reference=reference.name, reference_value=reference.median))
        figures.append(reference)
        if any(d != digests[0] for d in digests):
            raise AssertionError(f"replay digests differ between runs: {digests}")
        return figures


async def _all() -> list[Figure]:
    return await decode_figures() + await fold_figures() + await replay_figures()


if __name__ == "__main__":
    for fig in asyncio.run(_all()):
        print(f"{fig.name}: {fig.median:,.0f} {fig.unit} (range {fig.low:,.0f}-{fig.high:,.0f}; target {fig.target})")
