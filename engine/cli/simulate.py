"""``rollout simulate``: how often a rollback policy kills a healthy candidate, how often
and how fast it kills a bad one, measured on simulated traffic before it judges real
traffic.

Every simulated rollout is folded by the rollback consumer's own projection, judged
after every event as the engine judges (see ``engine/logtools/simulate.py`` and
docs/rollback.md). No server is needed.

    rollout simulate                                   # the recommended preset, typical traffic
    rollout simulate --preset canary-split --profile near --regression none
    rollout simulate --policy my-policy.toml --split 5 --rollouts 500 --json
    rollout simulate --from audit.msgpack --rollout checkout --regression latency_ms:x1.2
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rollout_engine.engine.cli.common import CliError, add_json_flag, print_json

__all__ = ["register"]

DEFAULT_REGRESSIONS = ["none", "quality-3", "p95+10%", "cost+20%"]


def _policy(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str, str]:
    """(policy document, name, description) from --policy or --preset."""
    from rollout_engine.consumers.rollback.policy import (
        PolicyError,
        load_policy,
        load_policy_file,
        policy_document,
    )
    from rollout_engine.consumers.rollback.presets import PRESETS

    try:
        if args.policy:
            policy = load_policy_file(args.policy)
            return policy_document(policy), policy.name, f"from {args.policy}"
        policy = load_policy({"preset": args.preset})
    except PolicyError as exc:
        raise CliError(str(exc), "not_found" if "does not exist" in str(exc) else "invalid") from None
    return policy_document(policy), args.preset, f"preset: {PRESETS[args.preset].summary}"


def _profile(args: argparse.Namespace) -> Any:
    from rollout_engine.engine.logtools.export import ExportError
    from rollout_engine.engine.logtools.profiles import PROFILES, fit_profile

    if args.source:
        from pathlib import Path

        if not Path(args.source).is_file():
            raise CliError(f"--from {args.source}: no such file; pass an export written by `rollout export`",
                           "not_found")
        try:
            return fit_profile(args.source, rollout=args.rollout, variant=args.variant)
        except (ExportError, ValueError) as exc:
            raise CliError(str(exc), "invalid") from None
    return PROFILES[args.profile]


def _run(args: argparse.Namespace) -> int:
    from rollout_engine.engine.logtools.profiles import parse_regression
    from rollout_engine.engine.logtools.simulate import Scenario, render, run_scenario

    document, name, about = _policy(args)
    profile = _profile(args)
    try:
        regressions = [parse_regression(text) for text in (args.regression or DEFAULT_REGRESSIONS)]
    except ValueError as exc:
        raise CliError(str(exc), "invalid") from None
    results = []
    for split in args.split or [10.0, 50.0]:
        for regression in regressions:
            scenario = Scenario(document, profile, split, regression, rollouts=args.rollouts, minutes=args.minutes,
                                budget=args.budget, seed=args.seed, policy_name=name)
            started = time.perf_counter()
            result = run_scenario(scenario, args.workers).to_dict()
            if not args.json:
                print(f"  {split:g}% {result['candidate']}: {result['kills']}/{result['rollouts']} killed "
                      f"({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
            results.append(result)
    if args.json:
        print_json({"policy": name, "about": about, "profile": profile.name, "traffic": profile.about,
                    "results": results})
        return 0
    print(f"policy: {name} ({about})")
    print(f"traffic: {profile.name}: {profile.about}")
    print(f"{args.rollouts} simulated rollouts per row, judged after every event; a rollout ends at its first "
          f"kill, after {args.minutes:g} min of traffic, or (a regressed candidate) after {args.budget} "
          "candidate samples\n")
    print(render(results, markdown=args.markdown))
    return 0


def _split(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a canary percentage, got {text!r}") from None
    if not 0.0 < value < 100.0:
        raise argparse.ArgumentTypeError(f"{text}: a split must be above 0 and below 100")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from rollout_engine.consumers.rollback.presets import preset_names
    from rollout_engine.engine.logtools.profiles import PROFILES, REGRESSIONS

    parser = sub.add_parser("simulate", help="false kills, power and time to kill of a rollback policy",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=preset_names(), default="recommended",
                       help="a named policy (default: recommended)")
    which.add_argument("--policy", help="a rollback policy TOML file instead of a preset")
    traffic = parser.add_mutually_exclusive_group()
    traffic.add_argument("--profile", choices=sorted(PROFILES), default="typical",
                         help="built-in traffic (default: typical)")
    traffic.add_argument("--from", dest="source", metavar="EXPORT",
                         help="draw traffic from a variant's recorded values in an export file")
    parser.add_argument("--rollout", help="with --from: the rollout whose values to draw (default: all)")
    parser.add_argument("--variant", default="baseline", help="with --from: the variant to draw (default: baseline)")
    parser.add_argument("--split", type=_split, action="append",
                        help="canary percentage; repeat for several (default: 10 and 50)")
    parser.add_argument("--regression", action="append",
                        help=f"the candidate: {', '.join(REGRESSIONS).replace('%', '%%')} or METRIC:+N / METRIC:-N / METRIC:xF "
                             "(comma-joined); repeat for several (default: all four named)")
    parser.add_argument("--rollouts", type=_positive, default=100, help="simulated rollouts per row (default 100)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="event-time horizon of each rollout, minutes (default 5)")
    parser.add_argument("--budget", type=_positive, default=500,
                        help="candidate samples a regression must be caught within (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (same seed, same traffic, same result)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, at most 2)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_json_flag(parser)
    parser.set_defaults(handler=_run)
