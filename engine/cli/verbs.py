"""``rollout abort | retry | promote | pause | unpause``: the verbs of Argo Rollouts' plugin,
and ``rollout clear-escalation``.

Each is one request to the ``rollout-api`` service and one control command on the log,
recording who (``--actor``, default ``$ROLLOUT_ACTOR`` then ``$USER``), why
(``--reason``) and the verb; ``rollout events ROLLOUT`` lists them.

- ``abort``: kill switch on, candidate to 0% now (``--reason`` required). ``kill`` is
  the same command under its older name.
- ``retry``: after an abort, start again at the first progression step.
- ``promote``: canary to the next progression step; ``--full`` to 100%.
- ``pause`` / ``unpause``: stop / restart automatic progression (guards and kill
  switches keep running while paused).
"""

from __future__ import annotations

import argparse
from typing import Any

from rollout_engine.engine.cli.common import handler, print_json, sanitize
from rollout_engine.engine.cli.control import _change_payload, _common, _print_change, request

__all__ = ["register"]


async def _abort(args: argparse.Namespace) -> int:
    reply = await request(args, "abort", _change_payload(args))
    _print_change(args, reply, "aborted")
    return 0


async def _retry(args: argparse.Namespace) -> int:
    reply = await request(args, "retry", _change_payload(args))
    _print_change(args, reply, "retried from the first step")
    return 0


async def _promote(args: argparse.Namespace) -> int:
    reply = await request(args, "promote", _change_payload(args, full=True if args.full else None))
    _print_change(args, reply, "promoted")
    return 0


async def _pause(args: argparse.Namespace) -> int:
    reply = await request(args, "pause", _change_payload(args))
    _print_change(args, reply, "paused")
    return 0


async def _unpause(args: argparse.Namespace) -> int:
    reply = await request(args, "unpause", _change_payload(args))
    _print_change(args, reply, "unpaused")
    return 0


async def _clear_escalation(args: argparse.Namespace) -> int:
    reply = await request(args, "clear_escalation", _change_payload(args, trigger=args.trigger))
    if args.json:
        print_json(reply)
        return 0
    for flag in reply["cleared"]:
        print(f"{sanitize(reply['rollout'])}: escalation {sanitize(flag['trigger'])} cleared; "
              f"recorded as escalation {flag['id']} at log seq {flag['seq']}")
    return 0


HELP = """\
The verbs of Argo Rollouts' kubectl plugin, each one request to the rollout API and one
control command on the log recording who (--actor), why (--reason) and the verb;
`rollout events ROLLOUT` lists them.

  abort     kill switch on, candidate to 0% now (--reason required; `kill` is an alias)
  retry     after an abort: start again at the first progression step
  promote   canary to the next progression step; --full: to 100%
  pause     stop automatic progression (guards and kill switches keep running)
  unpause   let automatic progression move again
  clear-escalation  end armed escalation flags by hand (--reason required; --trigger
            GUARD for one); promoting the candidate ends them too
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def verb(name: str, summary: str, func: Any, aliases: tuple[str, ...] = (), reason: bool = False
             ) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, aliases=list(aliases), help=summary, description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(parser, reason_required=reason)
        parser.set_defaults(handler=handler(func))
        return parser

    verb("abort", "kill switch on: candidate to 0%% now (alias: kill)", _abort, aliases=("kill",), reason=True)
    verb("retry", "after an abort: restart at the first progression step", _retry)
    promote = verb("promote", "canary to the next progression step (--full: to 100%%)", _promote)
    promote.add_argument("--full", action="store_true", help="skip the remaining steps: canary to 100%%")
    verb("pause", "stop automatic progression (guards keep running)", _pause)
    verb("unpause", "let automatic progression move again", _unpause)
    clear = verb("clear-escalation", "end armed escalation flags by hand, with a reason", _clear_escalation,
                 reason=True)
    clear.add_argument("--trigger", help="only this guard's flag (default: every armed flag)")
