"""``rollout consumer NAME``: run one registered consumer in this process.

Runs until SIGTERM or Ctrl-C (it finishes and commits its batch first). With
``--until-idle`` it stops once it has folded the whole log and prints where it ended
and the state digest; ``--digest`` prints the digest of the committed state without
connecting to NATS. Two runs over the same log print the same digest.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    settings_from,
    stop_on_signals,
)
from rollout_engine.engine.settings import Settings

__all__ = ["register"]

log = logging.getLogger(__name__)


async def _run(args: argparse.Namespace) -> int:
    # The command's machinery is imported when it runs: `rollout` imports every command
    # module to build its parser, and the consumers load the statistics libraries.
    from rollout_engine.engine.cli.consumer_partitions import build, run_partitioned, start_metrics
    from rollout_engine.engine.stack.consumer_runner import (
        ConsumerLocked,
        StoreIncompatible,
        consumer_runner,
        stored_digest,
    )

    overrides = {"consumer_batch": args.batch} if args.batch else {}
    settings = settings_from(args, **overrides)
    if args.partitions is not None or args.process is not None:
        _priority(args.name, settings)
        return await run_partitioned(args, settings)
    consumer = build(args.name, settings)
    if args.digest:
        try:
            seq, digest = await stored_digest(consumer, settings)
        except StoreIncompatible as exc:
            raise CliError(str(exc)) from None
        _report(args, {"consumer": args.name, "seq": seq, "digest": digest})
        return 0
    _priority(args.name, settings)
    start_metrics(args, settings)
    runner = consumer_runner(consumer, settings, until_idle=args.until_idle, standby=args.standby)
    stop_on_signals(runner.stop)
    try:
        summary = await runner.run()
    except (ConsumerLocked, StoreIncompatible) as exc:
        raise CliError(str(exc)) from None
    if args.until_idle or args.json:
        _report(args, {"consumer": summary.consumer, "seq": summary.seq, "events": summary.events,
                       "dead_letters": summary.dead_letters, "digest": summary.digest})
    return 0


def _priority(name: str, settings: Settings) -> None:
    """A kill-path consumer asks for its CPU share (setting ``kill_path_nice``); every
    consumer reports its niceness as a gauge, so a refused request shows on a dashboard."""
    from rollout_engine.consumers import registry
    from rollout_engine.engine.stack.consumer_metrics import default_metrics
    from rollout_engine.engine.stack.processes import ask_priority

    spec = {spec.name: spec for spec in registry.specs()}.get(name)
    if spec is None:
        return  # an unknown name: the command refuses it, naming the known ones
    nice, refused = ask_priority(settings.kill_path_nice if spec.kill_path else 0)
    if refused:
        log.warning("consumer %s: %s; it runs at niceness %d and a kill may wait behind other work on a busy host",
                    name, refused, nice)
    default_metrics().niceness.labels(name).set(nice)


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
