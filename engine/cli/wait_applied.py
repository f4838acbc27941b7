"""``rollout wait ROLLOUT --for killed --applied [--timeout D]``: block until a rollout is
killed and, with ``--applied``, until every live SDK instance has applied the kill.

For CI pipelines and runbooks: "the kill switch is on" says the command is in the log;
``--applied`` says every running instance of every service has acknowledged it
(engine/api/propagation.py), the question on-call actually asks. Both parts are pushed
by NATS: the rollout's control subjects through an ordered consumer, the instances'
acknowledgements through a watch of the KV bucket ``ro_acks``.

Exit codes: 0 met, 1 the rollout was promoted to 100% instead of killed, 2 error (bad
arguments, unknown rollout, no NATS), 3 ``--timeout`` passed first (``--json`` then
names the instances still lagging).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.engine.api.propagation import Propagation, wait_applied
from rollout_engine.engine.api.service import ApiError, ControlApi, call
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    sanitize,
    settings_from,
)
from rollout_engine.engine.cli.propagation_view import propagation_lines
from rollout_engine.events import ControlState, decode_from_log, kind_of, subjects

__all__ = ["EXIT_ERROR", "EXIT_MET", "EXIT_OPPOSITE", "EXIT_TIMEOUT", "parse_duration", "register"]

EXIT_MET, EXIT_OPPOSITE, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h`` or ``500ms`` (0: wait forever)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


async def _status(nc: Client, rollout: str) -> dict[str, Any]:
    try:
        return await call(nc, "status", {"rollout": rollout})  # type: ignore[no-any-return]
    except ApiError as exc:
        if exc.code != 503:
            raise CliError(f"wait refused ({exc.code}): {exc.message}") from None
    try:
        return await ControlApi(nc).status({"rollout": rollout})
    except ApiError as exc:
        raise CliError(f"wait refused ({exc.code}): {exc.message}") from None


async def _until_killed(nc: Client, rollout: str, timeout: float | None) -> tuple[str, int, str, str]:
    """Follow the rollout's control subjects (last per subject, then live) until its state
    is killed (``met``) or promoted to 100% (``opposite``); ``pending`` on timeout.
    Returns (result, seq of the deciding command, its kind, its id)."""
    decided: asyncio.Future[tuple[str, int, str, str]] = asyncio.get_running_loop().create_future()
    latest: tuple[ControlState, int, str, str] | None = None

    async def on_message(msg: Msg) -> None:
        nonlocal latest
        seq = int(msg.metadata.sequence.stream)
        for event in decode_from_log(msg.subject, msg.data)[0]:
            state = getattr(event, "after", None)
            if isinstance(state, ControlState) and (latest is None or seq > latest[1]):
                latest = (state, seq, kind_of(event), event.id)
        if latest is None or decided.done() or msg.metadata.num_pending:
            return  # nothing yet, or still catching up: only the newest state counts
        state, *command = latest
        if state.kill_switch:
            decided.set_result(("met", *command))  # type: ignore[arg-type]
        elif state.canary_pct >= 100.0:
            decided.set_result(("opposite", *command))  # type: ignore[arg-type]

    sub = await nc.jetstream().subscribe(
        subjects.log_filter(rollout, "ctl"), stream=subjects.LOG_STREAM, cb=on_message, ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=2.0,
        config=ConsumerConfig(name=f"wait-{secrets.token_hex(6)}", inactive_threshold=10.0),
    )
    try:
        return await asyncio.wait_for(decided, timeout or None)
    except TimeoutError:
        return "pending", latest[1] if latest else 0, "", ""
    finally:
        await sub.unsubscribe()


async def wait_for(args: argparse.Namespace) -> int:
    if args.condition != "killed":
        raise CliError(f"--for {args.condition!r}: this wait knows only `killed` (with --applied)")
    started = time.monotonic()
    nc = await connect(settings_from(args), name="rollout-wait")
    propagation: Propagation | None = None
    try:
        reply = await _status(nc, args.rollout)
        last = reply.get("last_command") or {}
        if reply["control"]["kill_switch"]:
            result, seq, kind, cid = "met", int(last.get("seq", 0)), str(last.get("kind", "")), str(last.get("id", ""))
        else:
            result, seq, kind, cid = await _until_killed(nc, args.rollout, args.timeout)
        if result == "met" and args.applied:
            left = None if not args.timeout else max(0.001, args.timeout - (time.monotonic() - started))
            propagation = await wait_applied(nc.jetstream(), args.rollout, seq, left, command=kind, command_id=cid)
            if not propagation.complete:
                result = "pending"
    finally:
        await nc.close()
    return _report(args, result, seq, propagation, round(time.monotonic() - started, 3))


def _report(args: argparse.Namespace, result: str, seq: int, propagation: Propagation | None, waited: float) -> int:
    code = {"met": EXIT_MET, "opposite": EXIT_OPPOSITE}.get(result, EXIT_TIMEOUT)
    outcome = {"met": "met", "opposite": "opposite"}.get(result, "timeout")
    if args.json:
        line = {"rollout": args.rollout, "for": args.condition, "applied": bool(args.applied), "result": outcome,
                "exit_code": code, "waited_s": waited, "revision": seq,
                "propagation": propagation.to_json() if propagation is not None else None}
        sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
        return code
    name = sanitize(args.rollout)
    if outcome == "opposite":
        print(f"{name}: not killed: promoted to 100% (waited {waited:g}s)")
    elif outcome == "timeout" and propagation is None:
        print(f"{name}: timed out after {args.timeout:g}s waiting for killed")
    elif outcome == "timeout":
        print(f"{name}: killed at seq {seq}, but timed out after {args.timeout:g}s waiting for every instance:")
    else:
        print(f"{name}: killed at seq {seq}" + (", applied by every live instance" if propagation else "")
              + f" (waited {waited:g}s)")
    if propagation is not None:
        for text in propagation_lines(propagation.to_json()):
            print(text)
    return code


HELP = """\
Block until a rollout is killed and, with --applied, until every live SDK instance has
acknowledged the kill's control revision (instances silent for their TTL are stale and
not waited for).

exit codes:
  0  the condition is met
  1  the rollout was promoted to 100% instead of killed
  2  error: bad arguments, unknown rollout, no NATS
  3  --timeout passed first (the output names the instances still lagging)

example:
  rollout wait checkout-v2 --for killed --applied --timeout 30s
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("wait", help="block until a rollout is killed and every live SDK instance applied it "
                                         "(exit 0 met, 1 promoted instead, 2 error, 3 timeout)",
                            description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rollout", metavar="ROLLOUT")
    parser.add_argument("--for", dest="condition", required=True, choices=["killed"], metavar="CONDITION",
                        help="killed")
    parser.add_argument("--applied", action="store_true",
                        help="also wait until every live SDK instance has applied the kill (docs/sdk.md)")
    parser.add_argument("--timeout", type=parse_duration, default=0.0, metavar="D",
                        help="give up after D (90s, 5m, 1h, 500ms; default 0: wait forever) with exit code 3")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(wait_for))
