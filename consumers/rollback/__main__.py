"""``python -m rollout_engine.consumers.rollback check FILE``: validate a policy TOML file.

Prints the validated policy as the JSON document a ConfigChange carries in its
``policy`` field (every default filled in), or the error naming the bad field; exits 2
on an invalid policy so scripts and CI can use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import msgspec

from rollout_engine.consumers.rollback.policy import PolicyError, load_policy_file, policy_document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout_engine.consumers.rollback", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a policy TOML file and print it as JSON")
    check.add_argument("file")
    args = parser.parse_args(argv)
    try:
        policy = load_policy_file(args.file)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(policy_document(policy)), indent=2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
