"""The ``rollout`` command: one module per command group, registered here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rollout_engine.engine.cli import common

__all__ = ["main"]

# Each module exposes register(subparsers); order is the order of `rollout --help`.
_COMMAND_MODULES = ["up", "status", "schemas", "secure", "ticks", "traffic", "api", "verbs", "control", "wait", "events", "ope", "bandit", "consumer", "replay", "report", "explain", "simulate", "demo"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check compose commands exist)."""
    parser = common.Parser(
        prog="rollout",
        description="Event-sourced rollout engine on NATS JetStream.",
    )
    parser.add_argument("--config", help="settings TOML file (default: $ROLLOUT_CONFIG or ./rollout.toml)")
    parser.add_argument("--nats-url", help="NATS URL(s), comma-separated (default: the server of `rollout up`)")
    parser.add_argument("--data-dir", help="data directory (default: ./data)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"rollout_engine.engine.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rollout`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    wants_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except common.UsageError as exc:
        if not wants_json:
            sys.stderr.write(exc.usage)
            sys.stderr.write(f"{exc.prog}: error: {exc}\n")
        else:
            common.error(str(exc), exc.code, as_json=True)
        return 2
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return common.quiet_broken_pipe()
    except common.CliError as exc:
        common.error(str(exc), exc.code, as_json=bool(getattr(args, "json", False)))
        return 2


if __name__ == "__main__":
    sys.exit(main())
