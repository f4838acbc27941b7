"""``rollout consumer NAME``: run one registered consumer in this process.

Runs until SIGTERM or Ctrl-C (it finishes and commits its batch first). With
``--until-idle`` it stops once it has folded the whole log and prints where it ended
and the state digest; ``--digest`` prints the digest of the committed state without
connecting to NATS. Two runs over the same log print the same digest.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    settings_from,
    stop_on_signals,
)

__all__ = ["register"]


def _build(name: str, settings: object) -> object:
    from consumers import registry

    try:
        spec = registry.get(name)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    return importlib.import_module(spec.module).build(settings)


async def _run(args: argparse.Namespace) -> int:
    from consumers.runtime import Runner, stored_digest
    from engine.consumer_metrics import serve_metrics

    overrides = {"consumer_batch": args.batch} if args.batch else {}
    settings = settings_from(args, **overrides)
    if args.partitions is not None or args.process is not None:
        return await _run_partitioned(args, settings)
    consumer = _build(args.name, settings)
    if args.digest:
        from consumers.runtime import StoreIncompatible

        try:
            seq, digest = await stored_digest(consumer, settings)  # type: ignore[arg-type]
        except StoreIncompatible as exc:
            raise CliError(str(exc)) from None
        _report(args, {"consumer": args.name, "seq": seq, "digest": digest})
        return 0
    port = args.metrics_port if args.metrics_port is not None else 0
    if port:
        serve_metrics(port, settings.host)
    runner = Runner(consumer, settings, until_idle=args.until_idle)  # type: ignore[arg-type]
    stop_on_signals(runner.stop)
    from consumers.runtime import StoreIncompatible
    from consumers.store import ConsumerLocked

    try:
        summary = await runner.run()
    except (ConsumerLocked, StoreIncompatible) as exc:
        raise CliError(str(exc)) from None
    if args.until_idle or args.json:
        _report(args, {"consumer": summary.consumer, "seq": summary.seq, "events": summary.events,
                       "dead_letters": summary.dead_letters, "digest": summary.digest})
    return 0


async def _run_partitioned(args: argparse.Namespace, settings: object) -> int:
    """``--partitions``/``--process K --of M``: one runner per owned partition (docs/scaling.md)."""
    from consumers.runtime import PartitionMismatch, StoreIncompatible, stored_digest
    from consumers.store import ConsumerLocked
    from engine.consumer_metrics import serve_metrics
    from engine.partitioning import assign, log_partitions, parse_partitions, run_partitions

    if args.process is not None and args.of is None:
        raise CliError("--process K needs --of M (the number of processes sharing the partitions)")
    try:
        if args.partitions is not None:
            owned = parse_partitions(args.partitions)
        else:
            from engine.bus import connect

            nc = await connect(settings, name="consumer-assignment")  # type: ignore[arg-type]
            try:
                count = await log_partitions(nc.jetstream())
            finally:
                await nc.close()
            if not count:
                raise CliError("the log is not partitioned (setting `partitions` is 0 when it was created); "
                               "run the consumer without --process, or see docs/scaling.md")
            owned = assign(count, args.process, args.of)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.digest:
        rows: list[dict[str, object]] = []
        try:
            for partition in owned:
                seq, digest = await stored_digest(_build(args.name, settings), settings, partition)  # type: ignore[arg-type]
                rows.append({"partition": partition, "seq": seq, "digest": digest})
        except StoreIncompatible as exc:
            raise CliError(str(exc)) from None
        _report_partitions(args, rows)
        return 0
    if args.metrics_port:
        serve_metrics(args.metrics_port, settings.host)  # type: ignore[attr-defined]
    runners: list = []  # type: ignore[type-arg]
    stop_on_signals(lambda: [r.stop() for r in runners])
    try:
        summaries = await run_partitions(lambda: _build(args.name, settings), settings, owned,  # type: ignore[arg-type,return-value]
                                         until_idle=args.until_idle, on_runners=runners.extend)
    except (ConsumerLocked, StoreIncompatible, PartitionMismatch) as exc:
        raise CliError(str(exc)) from None
    if args.until_idle or args.json:
        _report_partitions(args, [{"partition": partition, "seq": s.seq, "events": s.events,
                                   "dead_letters": s.dead_letters, "digest": s.digest}
                                  for partition, s in zip(owned, summaries, strict=True)])
    return 0


def _report_partitions(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    """``--json``: one object with a row per partition; text: a line per partition."""
    if args.json:
        print_json({"consumer": args.name, "partitions": rows})
        return
    for row in rows:
        _report(args, {"consumer": args.name, **row})


def _report(args: argparse.Namespace, data: dict[str, object]) -> None:
    if args.json:
        print_json(data)
    else:
        sys.stdout.write(" ".join(f"{k}={v}" for k, v in data.items()) + "\n")
        sys.stdout.flush()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("consumer", help="run one consumer (projection) in this process", description=__doc__)
    parser.add_argument("name", help="consumer name (see consumers/registry.py), e.g. canary_stats, control")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--until-idle", action="store_true", help="stop once caught up with the log; print position and digest")
    mode.add_argument("--digest", action="store_true", help="print the committed state's digest (no NATS needed)")
    parser.add_argument("--batch", type=int, help="messages per fetch (default: the consumer_batch setting)")
    owner = parser.add_mutually_exclusive_group()
    owner.add_argument("--partitions", metavar="LIST",
                       help="run these partitions of a partitioned log, e.g. 0,1 or 0-3 (docs/scaling.md)")
    owner.add_argument("--process", type=int, metavar="K",
                       help="run the partitions of process K of --of M (p %% M == K)")
    parser.add_argument("--of", type=int, metavar="M", help="number of processes sharing the partitions (with --process)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (default: off)")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
