"""``rollout consumer NAME --partitions LIST | --process K --of M``: one runner per owned
partition of a partitioned log, in this process (docs/scaling.md).

Kept apart from ``engine/cli/consumer.py`` (which imports it when the command runs, so
``rollout --help`` loads no consumer); output is one line per partition, or with
``--json`` one object with a row each.
"""

from __future__ import annotations

import argparse
import sys

from rollout_engine.consumers import registry
from rollout_engine.consumers.consumer import (
    Consumer,
    PartitionMismatch,
    StoreIncompatible,
    stored_digest,
)
from rollout_engine.consumers.runtime import Runner
from rollout_engine.consumers.store import ConsumerLocked
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import CliError, print_json, stop_on_signals
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.consumer_metrics import metrics_port, serve_metrics
from rollout_engine.engine.stack.partitioning import (
    assign,
    log_partitions,
    parse_partitions,
    run_partitions,
)

__all__ = ["build", "run_partitioned", "start_metrics"]


def start_metrics(args: argparse.Namespace, settings: Settings) -> None:
    """Serve /metrics on ``--metrics-port``, else on the ``metrics_port`` setting (none
    under ``rollout up``, which serves its children's metrics itself)."""
    port = metrics_port(args.metrics_port, settings.metrics_port)
    if port:
        serve_metrics(port, settings.host)  # a taken port: MetricsPortInUse, one line (common.handler)



def build(name: str, settings: Settings) -> Consumer:
    """The registered consumer ``name``; an unknown name is a CLI error listing the known ones."""
    try:
        return registry.build(name, settings)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None


async def _owned(args: argparse.Namespace, settings: Settings) -> list[int]:
    """The partitions this process owns: ``--partitions`` as given, or ``K of M`` of the log's."""
    if args.process is not None and args.of is None:
        raise CliError("--process K needs --of M (the number of processes sharing the partitions)")
    try:
        if args.partitions is not None:
            return parse_partitions(args.partitions)
        nc = await connect(settings, name="consumer-assignment")
        try:
            count = await log_partitions(nc.jetstream())
        finally:
            await nc.close()
        if not count:
            raise CliError("the log is not partitioned (setting `partitions` was 0 when it was created); "
                           "run the consumer without --process, or see docs/scaling.md")
        return assign(count, args.process, args.of)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def run_partitioned(args: argparse.Namespace, settings: Settings) -> int:
    """Run (or, with ``--digest``, read) the owned partitions of consumer ``args.name``."""
    owned = await _owned(args, settings)
    if args.digest:
        rows: list[dict[str, object]] = []
        try:
            for partition in owned:
                seq, digest = await stored_digest(build(args.name, settings), settings, partition)
                rows.append({"partition": partition, "seq": seq, "digest": digest})
        except StoreIncompatible as exc:
            raise CliError(str(exc)) from None
        _report(args, rows)
        return 0
    start_metrics(args, settings)
    runners: list[Runner] = []

    def stop() -> None:
        for runner in runners:
            runner.stop()

    stop_on_signals(stop)
    try:
        summaries = await run_partitions(lambda: build(args.name, settings), settings, owned,
                                         until_idle=args.until_idle, on_runners=runners.extend,
                                         standby=args.standby)
    except (ConsumerLocked, StoreIncompatible, PartitionMismatch) as exc:
        raise CliError(str(exc)) from None
    if args.until_idle or args.json:
        _report(args, [{"partition": partition, "seq": s.seq, "events": s.events,
                        "dead_letters": s.dead_letters, "digest": s.digest}
                       for partition, s in zip(owned, summaries, strict=True)])
    return 0


def _report(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    if args.json:
        print_json({"consumer": args.name, "partitions": rows})
        return
    for row in rows:
        sys.stdout.write(" ".join(f"{k}={v}" for k, v in {"consumer": args.name, **row}.items()) + "\n")
    sys.stdout.flush()
