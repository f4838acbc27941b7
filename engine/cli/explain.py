"""``rollout explain COMMAND_ID --file EXPORT``: why a command was made, reproduced offline.

``rollout explain --rollout ROLLOUT --file EXPORT`` explains that rollout's latest kill switch.

Reads an audit export (``rollout export``), checks the command's Ed25519 signature
with the engine's public keys (``--keys DATA_DIR/signing-keys.json``; without it, the ring
the export's header carries), names the policy in force, re-runs the rollback judgement
on the exported log and checks the evidence the kill names. Needs no server and no secret.

Exit status: 0 when the command verifies and its judgement reproduces; 1 when anything does
not hold (each fault printed: a bad or missing signature, an altered evidence event named by
seq and id, a re-judged kill that differs); 2 when the export or the command is not found.
"""

from __future__ import annotations

import argparse

from rollout_engine.engine.cli.common import CliError, add_json_flag, handler
from rollout_engine.engine.logtools.explain import ExplainError, dumps, explain, load_ring, render

__all__ = ["register"]


async def _explain(args: argparse.Namespace) -> int:
    try:
        ring = load_ring(args.keys) if args.keys else None
        if not args.command_id and not args.rollout:
            raise CliError("name a command id, or --rollout ROLLOUT for its latest kill switch", "usage")
        result = explain(args.file, args.command_id or "", ring, rollout=args.rollout or "")
    except ExplainError as exc:
        raise CliError(str(exc), "not_found") from None
    print(dumps(result) if args.json else render(result))
    return 0 if result.ok else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("explain", help="reproduce one command offline from an export: signature, policy, "
                            "judgement, evidence", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command_id", metavar="COMMAND_ID", nargs="?",
                        help="the command's id (`rollout events ROLLOUT --json` shows it)")
    parser.add_argument("--rollout", help="without COMMAND_ID: explain this rollout's latest kill switch")
    parser.add_argument("--file", "-f", required=True, help="the export: *.msgpack or *.jsonl (rollout export)")
    parser.add_argument("--keys", help="the engine's public key ring (DATA_DIR/signing-keys.json); default: the "
                        "ring in the export's header")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_explain))
