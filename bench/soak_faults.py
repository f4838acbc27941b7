"""The long versions of the fault-injection tests (``make soak``).

``make test`` runs ``tests/integration/test_faults_*.py`` at scale 1 (about a minute and
a half on a 2-core machine). This runs the same tests with ``ROLLOUT_SOAK`` (default 10):
ten times the SIGKILL rounds, ten server outages instead of one, each store fault ten
times, a backlog ten times larger for the slow consumer, twenty restarts of the
rollback consumer after its kill. Same oracles: nothing lost, nothing doubled.

Usage: ``python -m bench.soak_faults [SCALE]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the fault tests at the given scale; return pytest's exit code."""
    args = sys.argv[1:] if argv is None else argv
    scale = args[0] if args else os.environ.get("ROLLOUT_SOAK", "10")
    if not scale.isdigit() or int(scale) < 1:
        print(f"soak scale must be a positive integer, got {scale!r}", file=sys.stderr)
        return 2
    env = {**os.environ, "ROLLOUT_SOAK": scale}
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "integration").glob("test_faults_*.py"))
    print(f"soak: {len(tests)} fault test files at scale {scale}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
