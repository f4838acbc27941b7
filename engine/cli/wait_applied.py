"""``rollout wait ROLLOUT --for killed --applied``: after the kill switch is on, wait until
every live SDK instance has acknowledged it (engine/cli/wait.py calls in here).

"The kill switch is on" says the command is in the log; ``--applied`` says every running
instance of every service applied it, the question on-call actually asks. The
acknowledgements are pushed by a watch of the KV bucket ``ro_acks``
(engine/api/propagation.py). Instances silent for longer than their TTL are stale and not
waited for; with no live instance the condition is met at once. The exit codes are
``rollout wait``'s: 0 met, 3 when ``--timeout`` passes first (the output then names the
instances still lagging).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rollout_engine.engine.api.propagation import Propagation, wait_applied
from rollout_engine.engine.cli.common import CliError
from rollout_engine.engine.cli.propagation_view import propagation_lines

__all__ = ["add_applied_flag", "applied_json", "applied_lines", "until_applied"]

MET, PENDING = "met", "pending"


def add_applied_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--applied", action="store_true",
                        help="with --for killed: also wait until every live SDK instance has applied the kill "
                             "(docs/sdk.md, Acknowledgements)")


async def until_applied(nc: Any, args: argparse.Namespace, result: str, view: Any,
                        started: float) -> tuple[str, Propagation | None]:
    """``(result, propagation)``: with ``--applied`` and a met ``killed``, the result stays
    met only if every live instance applied the kill's revision before the timeout."""
    if not getattr(args, "applied", False):
        return result, None
    if args.condition.name != "killed":
        raise CliError(f"--applied goes with --for killed, not --for {args.condition.name}", "usage")
    if result != MET:
        return result, None
    left = None if not args.timeout else max(0.001, args.timeout - (time.monotonic() - started))
    last = view.last_command or {}
    propagation = await wait_applied(nc.jetstream(), view.rollout, view.command_seq, left,
                                     command=str(last.get("kind", "")), command_id=str(last.get("id", "")))
    return (MET if propagation.complete else PENDING), propagation


def applied_json(propagation: Propagation | None) -> dict[str, Any]:
    """The ``propagation`` field of ``--json`` (nothing without ``--applied``)."""
    return {} if propagation is None else {"propagation": propagation.to_json()}


def applied_lines(propagation: Propagation | None) -> list[str]:
    """Who applied the kill, as ``rollout status`` shows it (nothing without ``--applied``)."""
    if propagation is None:
        return []
    head = [] if propagation.complete else ["not every live SDK instance applied the kill in time:"]
    return head + propagation_lines(propagation.to_json())
