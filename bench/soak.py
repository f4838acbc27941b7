"""``make soak``: the long-running checks (not part of ``make test``).

1. The load soak (``bench/soak_load.py``): ``canary_stats`` and ``rollback`` consumer
   processes at 80% of their measured capacity for 10 minutes, resident memory and lag
   sampled and reported flat or not (``bench/results/soak.json``).
2. The fault-injection tests at scale 10 (``bench/soak_faults.py``).

Usage::

    python -m bench.soak                      # both (about 25 minutes)
    python -m bench.soak --minutes 2 --no-faults
    python -m bench.soak --faults-only 3      # the fault tests at scale 3
"""

from __future__ import annotations

import argparse
import sys

from bench import soak_faults, soak_load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load soak (default 10)")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of measured capacity to produce (default 0.8)")
    parser.add_argument("--consumers", default="canary_stats,rollback", help="consumers to soak, comma-separated")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault-injection tests")
    parser.add_argument("--faults-only", metavar="SCALE", help="run only the fault tests, at this scale")
    args = parser.parse_args(argv)
    if args.faults_only:
        return soak_faults.main([args.faults_only])
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    code = soak_load.main(args.minutes, args.consumers.split(","), args.fraction)
    if not args.no_faults:
        code = soak_faults.main([]) or code
    return code


if __name__ == "__main__":
    sys.exit(main())
