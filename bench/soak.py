"""``make soak``: the long-running checks. Today: the fault-injection tests at scale 10
(``bench/soak_faults.py``); pass a scale to change it: ``python -m bench.soak 3``."""

from __future__ import annotations

import sys

from bench.soak_faults import main

if __name__ == "__main__":
    sys.exit(main())
