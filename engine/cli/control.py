"""``rollout resume | set | evaluate``: operator changes, through the API.

(``abort``/``kill``, ``retry``, ``promote``, ``pause`` and ``unpause`` are in
``engine/cli/verbs.py``.)

Each command is one request to the ``rollout-api`` service (``rollout up`` runs it), so
the CLI, dashboards and scripts share one set of validations and one audit trail: the
change is a control command on the log, recording who (``--actor``, default
``$ROLLOUT_ACTOR`` then ``$USER``), why (``--reason``), when, and the state before and after.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    color,
    handler,
    print_json,
    sanitize,
    settings_from,
)
from rollout_engine.events.ids import new_event_id

__all__ = ["default_actor", "register", "request"]


def default_actor() -> str:
    """``$ROLLOUT_ACTOR``, else the login name made subject-safe; empty when neither is set."""
    raw = os.environ.get("ROLLOUT_ACTOR") or os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:64]


async def request(args: argparse.Namespace, endpoint: str, payload: dict[str, Any]) -> Any:
    """One API call with the global flags' settings; API refusals become CliError."""
    settings = settings_from(args)
    nc = await connect(settings, name=f"rollout-{endpoint}", reconnect=False)
    try:
        return await call(nc, endpoint, payload, timeout=getattr(args, "timeout", 10.0))
    except ApiError as exc:
        raise CliError.from_api(exc.code, exc.message) from None
    finally:
        await nc.close()


def _print_change(args: argparse.Namespace, reply: dict[str, Any], verb: str) -> None:
    if args.json:
        print_json(reply)
        return
    state = reply["control"]
    summary = (f"canary {state['canary_pct']:g}%, kill switch {'ON' if state['kill_switch'] else 'off'}"
               + (", progression paused" if state.get("paused") else ""))
    if not reply.get("changed"):
        print(f"{sanitize(reply['rollout'])}: no change ({summary})")
        return
    cmd = reply["command"]
    print(f"{sanitize(reply['rollout'])}: {color(verb, '33')} ({summary}); "
          f"recorded as {cmd['kind']} {cmd['id']} at log seq {cmd['seq']}")


def _change_payload(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"rollout": args.rollout, "actor": args.actor, "request_id": new_event_id()}
    if args.reason is not None:
        payload["reason"] = args.reason
    payload.update({k: v for k, v in extra.items() if v is not None})
    return payload


async def _resume(args: argparse.Namespace) -> int:
    reply = await request(args, "resume", _change_payload(args, canary_pct=args.canary_pct))
    _print_change(args, reply, "resumed")
    return 0


def _policy_document(args: argparse.Namespace) -> dict[str, Any] | None:
    """The policy to publish: ``--policy FILE`` and/or ``--preset NAME`` (the file's fields
    override the preset's). A preset is expanded, so the log records every number."""
    policy: dict[str, Any] | None = None
    if args.policy:
        try:
            import tomllib

            with open(args.policy, "rb") as handle:
                document = tomllib.load(handle)
            policy = document.get("policy", document)  # a [policy] table or the top level
        except (OSError, ValueError) as exc:
            raise CliError(f"--policy {args.policy}: {exc}") from None
    if args.preset:
        if policy is not None and "preset" in policy:
            raise CliError(f"--preset {args.preset} and {args.policy} (preset = {policy['preset']!r}): give one preset",
                           "usage")
        policy = {**(policy or {}), "preset": args.preset}
    if policy is not None and "preset" in policy:
        from rollout_engine.consumers.rollback.policy import (
            PolicyError,
            load_policy,
            policy_document,
        )

        try:
            policy = policy_document(load_policy(policy))
        except PolicyError as exc:
            raise CliError(str(exc), "invalid") from None
    return policy


async def _set(args: argparse.Namespace) -> int:
    policy = _policy_document(args)
    if args.canary_pct is None and policy is None:
        raise CliError("nothing to set: give --canary-pct N, --policy FILE and/or --preset NAME")
    reply = await request(args, "config", _change_payload(args, canary_pct=args.canary_pct, policy=policy,
                                                          create=True if args.create else None))
    _print_change(args, reply, "configured")
    return 0


async def _evaluate(args: argparse.Namespace) -> int:
    reply = await request(args, "evaluate", {"rollout": args.rollout, "actor": args.actor,
                                             "request_id": new_event_id(), "act": not args.dry_run})
    if args.json:
        print_json(reply)
        return 0
    print(f"{sanitize(args.rollout)}: would kill: {'YES' if reply.get('would_kill') else 'no'}; "
          f"killed now: {'YES' if reply.get('killed_now') else 'no'}")
    for line in reply.get("reasons", []):
        print(f"  {sanitize(str(line))}")
    return 0


def _common(parser: argparse.ArgumentParser, reason_required: bool = False) -> None:
    parser.add_argument("rollout", metavar="ROLLOUT")
    parser.add_argument("--reason", required=reason_required, help="why (recorded in the audit trail)")
    parser.add_argument("--actor", default=default_actor(), help="operator identity (default $ROLLOUT_ACTOR, then $USER)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the API")
    add_json_flag(parser)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number 0-100, got {text!r}") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected 0-100")
    return value


def _preset_names() -> list[str]:
    from rollout_engine.consumers.rollback.presets import preset_names

    return preset_names()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resume = sub.add_parser("resume", help="lift the kill switch, re-enable the candidate (default 5%%)",
                            description=__doc__)
    _common(resume)
    resume.add_argument("--canary-pct", type=_percent, default=None, help="re-enable at this percentage (default 5)")
    resume.set_defaults(handler=handler(_resume))

    setp = sub.add_parser("set", help="change a rollout's canary percentage or policy", description=__doc__)
    _common(setp)
    setp.add_argument("--canary-pct", type=_percent, help="percentage of traffic to the candidate (0-100)")
    setp.add_argument("--policy", help="rollback policy TOML file (validated before anything changes)")
    setp.add_argument("--preset", choices=_preset_names(),
                      help="a named rollback policy (docs/rollback.md); with --policy, the file overrides it")
    setp.add_argument("--create", action="store_true", help="allow a rollout that has nothing in the log yet")
    setp.set_defaults(handler=handler(_set))

    ev = sub.add_parser("evaluate", help="judge a rollout now with its live policy (may kill it)",
                        description=__doc__)
    ev.add_argument("rollout", metavar="ROLLOUT")
    ev.add_argument("--actor", default=default_actor(), help="operator identity")
    ev.add_argument("--dry-run", action="store_true", help="report only; never kill")
    ev.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the API")
    add_json_flag(ev)
    ev.set_defaults(handler=handler(_evaluate))
