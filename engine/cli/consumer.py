"""``rollout consumer NAME``: run one registered consumer in this process.

Runs until SIGTERM or Ctrl-C (it finishes and commits its batch first). With
``--until-idle`` it stops once it has folded the whole log and prints where it ended
and the state digest; ``--digest`` prints the digest of the committed state without
connecting to NATS. Two runs over the same log print the same digest.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    settings_from,
    stop_on_signals,
)

if TYPE_CHECKING:
    from rollout_engine.consumers.runtime import Consumer
    from rollout_engine.engine.settings import Settings

__all__ = ["register", "start_metrics"]


def _build(name: str, settings: Settings) -> Consumer:
    from rollout_engine.consumers import registry

    try:
        return registry.build(name, settings)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None


async def _run(args: argparse.Namespace) -> int:
    from rollout_engine.consumers.runtime import Runner, stored_digest

    overrides = {"consumer_batch": args.batch} if args.batch else {}
    settings = settings_from(args, **overrides)
    if args.partitions is not None or args.process is not None:
        from rollout_engine.engine.cli.consumer_partitions import run_partitioned

        return await run_partitioned(args, settings)
    consumer = _build(args.name, settings)
    if args.digest:
        from rollout_engine.consumers.runtime import StoreIncompatible

        try:
            seq, digest = await stored_digest(consumer, settings)  # type: ignore[arg-type]
        except StoreIncompatible as exc:
            raise CliError(str(exc)) from None
        _report(args, {"consumer": args.name, "seq": seq, "digest": digest})
        return 0
    start_metrics(args, settings)
    runner = Runner(consumer, settings, until_idle=args.until_idle, standby=args.standby)  # type: ignore[arg-type]
    stop_on_signals(runner.stop)
    from rollout_engine.consumers.runtime import StoreIncompatible
    from rollout_engine.consumers.store import ConsumerLocked

    try:
        summary = await runner.run()
    except (ConsumerLocked, StoreIncompatible) as exc:
        raise CliError(str(exc)) from None
    if args.until_idle or args.json:
        _report(args, {"consumer": summary.consumer, "seq": summary.seq, "events": summary.events,
                       "dead_letters": summary.dead_letters, "digest": summary.digest})
    return 0


def start_metrics(args: argparse.Namespace, settings: Settings) -> None:
    """Serve /metrics on ``--metrics-port``, else on the ``metrics_port`` setting (none
    under ``rollout up``, which serves its children's metrics itself)."""
    from rollout_engine.engine.stack.consumer_metrics import metrics_port, serve_metrics

    port = metrics_port(args.metrics_port, settings.metrics_port)
    if port:
        serve_metrics(port, settings.host)  # a taken port: MetricsPortInUse, one line (common.handler)


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
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (default: the metrics_port setting; 0: off)")
    parser.add_argument("--standby", action="store_true",
                        help="warm standby: if another process runs this consumer, wait (built and connected) and "
                             "take over the moment it exits (docs/reliability.md)")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
