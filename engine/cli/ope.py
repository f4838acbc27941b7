"""``rollout ope``: judge a candidate bandit policy on past traffic before it serves.

Reads a rollout's logged decisions (with propensities) and outcomes, from the live log
or from a ``rollout export`` file, and prints the candidate's IPS and self-normalised
IPS estimates with confidence intervals (docs/bandit.md explains them).

    rollout ope checkout-v2 --policy a=0.1,b=0.1,c=0.8
    rollout ope checkout-v2 --policy-file candidate.json --from audit.jsonl --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    sanitize,
    settings_from,
)
from rollout_engine.engine.logtools.export import ExportError, read_export
from rollout_engine.engine.logtools.ope import (
    check_policy,
    estimate,
    join_rounds,
    parse_policy_text,
)
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.events import AnyEvent, subjects
from rollout_engine.events.ids import is_token

__all__ = ["register"]


async def _load_events(args: argparse.Namespace) -> list[AnyEvent]:
    events: list[AnyEvent] = []
    if args.source:
        try:
            _, records, _ = read_export(args.source)
        except ExportError as exc:
            raise CliError(str(exc)) from None
        for record in records:
            events.extend(events_of(record))
        return events

    settings = settings_from(args)
    nc = await connect(settings, name="rollout-ope", reconnect=False)
    try:
        async for msg in read_messages(nc.jetstream(), [subjects.events_filter(args.rollout)]):
            events.extend(events_of(msg))
    finally:
        await nc.close()
    return events


def _policy(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    try:
        if args.policy_file:
            raw = json.loads(Path(args.policy_file).read_text())
            if not isinstance(raw, dict):
                raise ValueError("expected a JSON object: {context: {arm: probability}}")
            return check_policy(raw)
        if args.policy:
            return parse_policy_text(args.policy)
    except (OSError, ValueError) as exc:
        raise CliError(f"candidate policy: {exc}") from None
    raise CliError("give the candidate policy: --policy a=0.2,b=0.8 or --policy-file FILE.json")


async def _ope(args: argparse.Namespace) -> int:
    if not is_token(args.rollout):
        raise CliError(f"rollout {args.rollout!r}: expected 1-64 of A-Z a-z 0-9 _ -")
    if not 0.0 < args.level < 1.0:
        raise CliError(f"--level {args.level}: expected a confidence level between 0 and 1, e.g. 0.95")
    policy = _policy(args)
    events = await _load_events(args)
    rounds, missing = join_rounds(
        events, args.rollout, default_reward=None if args.drop_missing else args.default_reward,
        neutral_reward=args.neutral_reward,
    )
    try:
        result = estimate(rounds, policy, level=args.level, missing=missing)
    except ValueError as exc:
        raise CliError(f"rollout {sanitize(args.rollout)}: {exc}") from None
    if args.json:
        print_json(result.to_dict() | {"rollout": args.rollout, "policy": policy})
        return 0
    pct = f"{args.level:.0%}"
    print(f"rollout {sanitize(args.rollout)}: {result.n} logged decisions "
          f"({result.missing_outcomes} without a conclusive outcome)")
    print(f"  logged policy value   {result.logged_value:.4f}")
    print(f"  candidate IPS         {result.ips:.4f}  {pct} CI [{result.ips_low:.4f}, {result.ips_high:.4f}]")
    print(f"  candidate SNIPS       {result.snips:.4f}  {pct} CI [{result.snips_low:.4f}, {result.snips_high:.4f}]")
    print(f"  effective sample size {result.effective_n:.1f} (max weight {result.max_weight:.2f})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("ope", help="off-policy evaluation of a candidate bandit policy (IPS, SNIPS)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rollout", metavar="ROLLOUT")
    parser.add_argument("--policy", help="candidate arm probabilities, e.g. a=0.1,b=0.1,c=0.8")
    parser.add_argument("--policy-file", help='JSON {"<context>": {"<arm>": p}}; "" is the fallback context')
    parser.add_argument("--from", dest="source", help="read a `rollout export` file instead of the live log")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    parser.add_argument("--default-reward", type=float, default=0.0,
                        help="reward of a decision with no conclusive outcome (default 0.0, as the bandit)")
    parser.add_argument("--neutral-reward", type=float, default=0.5, help="reward of a neutral verdict (0.5)")
    parser.add_argument("--drop-missing", action="store_true", help="drop decisions with no conclusive outcome")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_ope))
