"""Breach -> kill-switch latency under background load (a ``make bench`` figure, target p99 <= 50 ms).

What is measured: from the publication of the event that makes a breach conclusive (the
30th bad candidate sample, the default policy's minimum sample) to a *subscribed service* receiving the
KillSwitch on ``ro.ctl.<rollout>.kill_switch``, while healthy background traffic flows at
``background_eps`` events/s (100-event batches over 10 rollouts, bench.workload) through
the same stream and the same rollback consumer. Each kill is a fresh rollout: its first
29 bad samples are published and folded first, then the clock starts on the trigger.

The figures of ``make bench`` run the rollback consumer as ``rollout up`` runs it: a
``rollout consumer rollback`` process of its own (``--processes 1``; ``--processes 2``
runs two over a log of two partitions), with the default settings (durable pull
consumer, one SQLite commit per batch, outbox relay), while this process publishes the
background load and subscribes as the service (``bench.kill_children``). Run alone, the
default driver runs ``consumers.runtime.Runner`` inside this process, where ``--trace``
can stamp each breach's steps; it then shares one Python thread with the producer and
the service, which costs it most of its p99 on a busy host (bench/NOTES.md, "The figures
of 2026-12-03, afternoon"). :class:`LiveFold` (``--driver livefold``) folds the log
in-process through an ordered push consumer with the runtime's fold
(``consumers.folding.fold_message``) and publishes what it emits with ``Nats-Msg-Id``,
with no commit: its p99 is the reference, the floor the runtime's batching adds to.

Run alone: ``.venv/bin/python -m bench.bench_rollback --kills 50 --processes 1 --neighbours 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from bench.contention import KillTrace, neighbours, priority
from bench.harness import Figure, bench_server
from bench.kill_children import rollback_children
from bench.workload import make_batches
from rollout_engine.consumers import early as early_module
from rollout_engine.consumers.folding import fold_message
from rollout_engine.consumers.projection import Projection
from rollout_engine.consumers.rollback.consumer import build
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.bus import connect
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import Event, LogMessage, encode, encode_batch, kind_of, subjects
from rollout_engine.events.message import log_messages

__all__ = ["LiveFold", "kill_latency", "rollback_figures"]


class LiveFold:
    """Fold the log into a projection as it arrives; publish what the projection emits.

    An ordered push consumer over the whole ``RO_LOG`` stream keeps the log's total
    order; each emitted event is published with its id as ``Nats-Msg-Id``.
    ``on_apply`` (optional) is called with the number of events of each folded message,
    for tests that wait on progress.
    """

    def __init__(self, js: JetStreamContext, projection: Projection,
                 on_apply: Callable[[int], None] | None = None) -> None:
        self.js = js
        self.projection = projection
        self.on_apply = on_apply
        self.events = 0
        self.last_seq = 0
        self.emitted: list[Event] = []
        self._sub: Any = None

    async def start(self, deliver_all: bool = True) -> None:
        policy = DeliverPolicy.ALL if deliver_all else DeliverPolicy.NEW
        self._sub = await self.js.subscribe(
            "", stream=subjects.LOG_STREAM, ordered_consumer=True, deliver_policy=policy, cb=self._on_msg,
            pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024,
        )

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        folded = fold_message(LogMessage(seq, msg.subject, msg.data), [self.projection])[0]
        self.events += folded.events
        if self.on_apply is not None:
            self.on_apply(folded.events)
        for command in folded.emitted:
            self.emitted.append(command)
            await self.js.publish(subjects.for_event(command), encode(command), headers={"Nats-Msg-Id": command.id})
        self.last_seq = seq

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Wait until the fold has applied the message at stream sequence ``seq``."""
        deadline = time.monotonic() + timeout
        while self.last_seq < seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fold stuck at seq {self.last_seq}, waiting for {seq}")
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


def _commit_then_publish(runner: Any) -> None:
    """The runtime as before the early publish: one fold per batch, commands relayed after the commit."""
    async def nothing(_js: Any, _rows: list[Any]) -> list[Any]:
        return []
    runner.relay.publish_early = nothing
    early_module.SLICE = early_module.SLICE_BYTES = 1_000_000_000


def _background_messages(seconds: float, eps: int) -> list[tuple[str, bytes]]:
    """Pre-encoded healthy batches for ``seconds`` of load, replayed in a loop, so the
    measuring process spends its time on the consumer rather than on making events."""
    total = int(seconds * eps)
    return [(subjects.event(rollout, kind), encode_batch(events))
            for rollout, kind, events in make_batches(total, rollouts=10, seed=11)]


async def _background(js: JetStreamContext, eps: int, stop: asyncio.Event, sent: list[int],
                      messages: list[tuple[str, bytes]]) -> None:
    """Publish the batches at ``eps`` events/s (100 per message) until ``stop``."""
    nc = js._nc  # core publish: JetStream stores it, no ack round trip
    start, i = time.perf_counter(), 0
    while not stop.is_set():
        subject, data = messages[i % len(messages)]
        i += 1
        await nc.publish(subject, data)
        sent[0] += 100
        delay = start + sent[0] / eps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


async def _wait_runner(runner: Any, seq: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while runner.folder.seq < seq:
        if time.monotonic() > deadline:
            raise TimeoutError(f"runner stuck at seq {runner.folder.seq}, waiting for {seq}")
        await asyncio.sleep(0.002)


async def kill_latency(kills: int = 100, background_eps: int = 50_000, warmup_s: float = 1.0,
                       driver: str = "runtime", consumer_batch: int | None = None,
                       fetch_timeout: float | None = None, busy: int = 0, busy_nice: int = 0, early: bool = True,
                       kill_timeout_s: float = 30.0, budget_s: float = 90.0, nice: int | None = None,
                       processes: int = 0) -> dict[str, Any]:
    """Measure breach -> KillSwitch latency ``kills`` times under background load.

    ``busy``: that many CPU-bound neighbour processes run during the kills
    (``bench.contention.neighbours``), at niceness ``busy_nice``. Returns p50/p99/max in milliseconds, every
    sample, the background rate achieved and (runtime driver) where each breach's
    time went (``bench.contention.KillTrace``). ``early=False`` runs the runtime as it
    was before the early publish (whole-batch fold, publish after the commit), for a
    same-run comparison. A kill not received within ``kill_timeout_s`` (the consumer
    fell that far behind its log) ends the run: ``missed`` says so; so does ``budget_s`` of
    kills (a consumer falling behind makes every later kill slower): ``kills`` says how many.
    ``nice``: the niceness the folding process and nats-server run at (default: the
    ``kill_path_nice`` ``rollout up`` asks for both, when the OS grants it; the background
    producer shares this process, so it gets that priority too).
    ``processes`` (runtime driver): run the consumer as that many ``rollout consumer rollback``
    children instead, over a log of that many partitions when more than one
    (``bench.kill_children``); the producer and the service keep the default priority.
    """
    messages = _background_messages(4.0, background_eps)
    slice_before = early_module.SLICE, early_module.SLICE_BYTES
    overrides = {} if consumer_batch is None else {"consumer_batch": consumer_batch}
    wanted = Settings().kill_path_nice if nice is None else nice
    if processes > 1:
        overrides["partitions"] = processes
    async with bench_server(niceness=wanted, **overrides) as (server, settings, nc, js):
        # Before the runner starts its threads (a niceness is per thread on Linux and
        # inherited by the threads created after); the server got it at its start, as under rollout up.
        boost = contextlib.AsyncExitStack()
        children = None
        if processes:
            children = await boost.enter_async_context(rollback_children(server.url or "", settings, processes,
                                                                         wanted, js))
            niceness = children.niceness()
        else:
            niceness = boost.enter_context(priority(wanted))
        fold = LiveFold(js, RollbackProjection())
        runner, task, trace = None, None, None
        if driver == "runtime" and children is None:
            options = {} if fetch_timeout is None else {"fetch_timeout": fetch_timeout}
            runner = consumer_runner(build(settings), settings, nc=await connect(settings, name="bench-rollback"),
                                     **options)
            if not early:
                _commit_then_publish(runner)
            trace = KillTrace(runner)
            task = asyncio.create_task(runner.run())
            fold.projection = runner.projection
        elif children is None:  # the children fold and publish: nothing folds here
            await fold.start()
        received: dict[str, float] = {}
        arrived: dict[str, asyncio.Event] = {}

        async def on_kill(msg: Msg) -> None:
            rollout = subjects.parse(msg.subject).rollout or ""
            received.setdefault(rollout, time.perf_counter())
            if trace is not None and rollout in arrived and not arrived[rollout].is_set():
                trace.received()
            if rollout in arrived:
                arrived[rollout].set()

        service = await nc.subscribe(subjects.control_filter(command="kill_switch"), cb=on_kill)
        stop, sent = asyncio.Event(), [0]
        load = asyncio.create_task(_background(js, background_eps, stop, sent, messages))
        spinning = contextlib.ExitStack()
        if busy:
            spinning.enter_context(neighbours(busy, busy_nice))
        await asyncio.sleep(warmup_s)
        samples: list[float] = []
        missed = 0
        t_load, sent_at_start = time.perf_counter(), sent[0]
        try:
            for k in range(kills):
                if time.perf_counter() - t_load > budget_s:
                    break
                rollout = f"kill-{k}"
                events = runs(rollout, 60, canary_pct=50, candidate=Profile(quality=82.0))
                trigger_at = 237  # the outcome of the 30th candidate run: quality is conclusive
                head, trigger = events[:trigger_at], events[trigger_at]
                for subject, payload in log_messages(head, 100):
                    ack = await js.publish(subject, payload, timeout=10)
                try:
                    if children is not None:
                        await children.wait_folded(js, rollout, ack.seq, kill_timeout_s)
                    elif runner is not None:
                        await _wait_runner(runner, ack.seq, kill_timeout_s)
                    else:
                        await fold.wait_for(ack.seq, kill_timeout_s)
                except TimeoutError:  # the consumer is that far behind its log: no kill can be timed
                    missed = 1
                    break
                arrived[rollout] = asyncio.Event()
                t0 = time.perf_counter()
                if trace is not None:
                    trace.arm(subjects.event(rollout, kind_of(trigger)), ack.seq, t0)
                await nc.publish(subjects.event(rollout, kind_of(trigger)), encode(trigger))
                try:
                    await asyncio.wait_for(arrived[rollout].wait(), kill_timeout_s)
                except TimeoutError:
                    missed = 1
                    break
                samples.append((received[rollout] - t0) * 1000)
        finally:
            elapsed = time.perf_counter() - t_load
            spinning.close()
            achieved = (sent[0] - sent_at_start) / elapsed
            folded = runner.folder.events if runner is not None else fold.events if children is None else -1
            stop.set()
            await load
            await service.unsubscribe()
            await fold.stop()
            if runner is not None and task is not None:
                runner.stop()
                await task
                await runner.nc.close()
            early_module.SLICE, early_module.SLICE_BYTES = slice_before
            await boost.aclose()
    ordered = sorted(samples) or [kill_timeout_s * 1000]
    if missed:  # the unreceived kill counts as the timeout: a lower bound of its latency
        ordered.append(kill_timeout_s * 1000)
    return {
        "missed": missed,
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max_ms": ordered[-1],
        "kills": len(ordered),
        "background_eps": achieved,
        "folded_events": folded,
        "samples_ms": ordered,
        "neighbours": busy,
        "niceness": niceness,
        "server_niceness": server.niceness,
        "trace": trace.summary() if trace is not None else {},
        "driver": (f"{processes} `rollout consumer rollback` process(es)" + (f" over {processes} partitions"
                   if processes > 1 else "") if children is not None
                   else "consumers.runtime Runner (durable pull, SQLite commit, outbox relay)" if driver == "runtime"
                   else "in-process LiveFold (ordered push consumer)"),
    }


async def rollback_figures(kills: int = 100, background_eps: int = 50_000, repeat: int = 3) -> list[Figure]:
    """The figures of ``make bench``: breach -> kill switch with the consumer as ``rollout up``
    runs it (a ``rollout consumer rollback`` process of its own, ``bench.kill_children``),
    on the quiet machine and with one CPU-bound neighbour process per core, runs
    interleaved (quiet, busy, quiet, busy...) so both see the same host; median of
    ``repeat`` runs with their range, beside the fold-only p99 and the quiet p99. Then one
    run each: the consumer at niceness 0, the consumer inside the measuring process (the
    method before 2026-12-03, traced), and two consumer processes over two partitions."""
    quiet: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    for _ in range(repeat):
        quiet.append(await kill_latency(kills, background_eps, processes=1))
        busy.append(await kill_latency(kills, background_eps, busy=cores, processes=1))
    fold_only = await kill_latency(kills, background_eps, driver="livefold")
    unboosted = await kill_latency(kills, background_eps, busy=cores, nice=0, processes=1)
    in_process = await kill_latency(kills, background_eps, driver="runtime", busy=cores)
    partitioned = await kill_latency(kills, background_eps, busy=cores, processes=2)
    note = (f"{kills} kills per run under {background_eps:,} background events/s; "
            "the consumer as `rollout up` runs it (`rollout consumer rollback`, a process of its own, default "
            f"settings) at niceness {quiet[0]['niceness']} (kill_path_nice, when the OS grants it); the producer "
            "and the subscribed service share another process at niceness 0")
    busy_note = note + f"; {cores} CPU-bound neighbour processes (one per core) during the kills"

    def extra(results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"max_ms": [r["max_ms"] for r in results], "background_eps": [r["background_eps"] for r in results],
                "missed": [r["missed"] for r in results], "kills": [r["kills"] for r in results],
                "trace": [r["trace"] for r in results]}

    def figure(name: str, key: str, results: list[dict[str, Any]], said: str, **meta: Any) -> Figure:
        runs_ = [r[key] for r in results]
        return Figure(name, "ms", statistics.median(runs_), min(runs_), max(runs_), runs_,
                      note=said, extra=extra(results), **meta)

    quiet_p99 = statistics.median(r["p99_ms"] for r in quiet)
    busy_p99 = statistics.median(r["p99_ms"] for r in busy)
    same = "quiet p99, same run"
    return [
        figure("rollback: breach -> kill switch received, p50", "p50_ms", quiet, note),
        figure("rollback: breach -> kill switch received, p99", "p99_ms", quiet, note, target="<= 50 ms",
               reference="fold-only p99 (ordered push consumer, no commit)", reference_value=fold_only["p99_ms"]),
        figure("rollback: kill switch with a busy neighbour per core, p50", "p50_ms", busy, busy_note),
        figure("rollback: kill switch with a busy neighbour per core, p99", "p99_ms", busy, busy_note,
               target="<= 50 ms", reference=same, reference_value=quiet_p99),
        figure("rollback: kill switch with a busy neighbour per core, max", "max_ms", busy, busy_note),
        figure("rollback: kill switch with a busy neighbour per core, the consumer and nats-server at niceness 0 "
               "(kill_path_nice = 0), p99, one run", "p99_ms", [unboosted],
               busy_note.replace(f"at niceness {quiet[0]['niceness']} (kill_path_nice, when the OS grants it)",
                                 "at niceness 0, nats-server too"),
               reference="the same at kill_path_nice, median p99", reference_value=busy_p99),
        figure("rollback: kill switch with a busy neighbour per core, the consumer inside the measuring process "
               "(the method before 2026-12-03), p99, one run", "p99_ms", [in_process],
               f"{kills} kills under {background_eps:,} background events/s and {cores} neighbours; the runtime in "
               "the measuring process, sharing one Python thread with the producer and the subscribed service "
               "(extra.trace says where each breach's time went)",
               reference="the consumer in its own process, median p99", reference_value=busy_p99),
        figure("rollback: kill switch with a busy neighbour per core, 2 partitions, 2 consumer processes, p99, "
               "one run", "p99_ms", [partitioned], busy_note.replace("(`rollout consumer rollback`, a process of "
               "its own, default settings)", "(two `rollout consumer rollback --process K --of 2` over a log of "
               "2 partitions)"), reference="one process, median p99", reference_value=busy_p99),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--background-eps", type=int, default=50_000)
    parser.add_argument("--driver", choices=("runtime", "livefold"), default="runtime")
    parser.add_argument("--consumer-batch", type=int, help="messages per fetch (default: the consumer_batch setting)")
    parser.add_argument("--fetch-timeout", type=float, help="seconds a fetch may wait (default: the runtime's)")
    parser.add_argument("--neighbours", type=int, default=0, help="CPU-bound neighbour processes during the kills")
    parser.add_argument("--trace", action="store_true", help="print where each breach's time went (runtime driver)")
    parser.add_argument("--commit-first", action="store_true", help="the runtime as before the early publish")
    parser.add_argument("--processes", type=int, default=0,
                        help="run the consumer as N `rollout consumer rollback` child processes, over N partitions "
                             "when N > 1 (default 0: in this process, traceable)")
    parser.add_argument("--nice", type=int,
                        help="niceness of the folding process and nats-server (default: kill_path_nice, -5)")
    args = parser.parse_args()
    result = asyncio.run(kill_latency(args.kills, args.background_eps, driver=args.driver,
                                      consumer_batch=args.consumer_batch, fetch_timeout=args.fetch_timeout,
                                      busy=args.neighbours, early=not args.commit_first, nice=args.nice,
                                      processes=args.processes))
    if args.trace:
        print(json.dumps(result["trace"], indent=1))
    print(f"breach -> kill switch: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"max {result['max_ms']:.1f} ms over {result['kills']} kills{' (then one missed)' if result['missed'] else ''}; "
          f"background {result['background_eps']:,.0f} events/s; "
          + (f"{result['folded_events']:,} events folded; " if result['folded_events'] >= 0 else "") +
          f"niceness {result['niceness']} (nats-server {result['server_niceness']}); driver: {result['driver']}")


if __name__ == "__main__":
    main()
