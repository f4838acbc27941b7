"""``rollout up`` runs its bulk consumers at a lower priority than the rollback consumer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rollout_engine.engine.cli.up import NICE
from rollout_engine.engine.stack.supervisor import Child


def niceness_of(child: Child, out: Path) -> int:
    child.log_file = out
    child.spawn()
    child.process.wait(30)
    return int(out.read_text().strip())


def test_a_child_with_nice_runs_at_that_lower_priority(tmp_path: Path) -> None:
    probe = [sys.executable, "-c", "import os; print(os.nice(0))"]
    base = os.nice(0)
    assert niceness_of(Child("bulk", probe, nice=5), tmp_path / "bulk.log") == base + 5
    assert niceness_of(Child("kill-path", probe), tmp_path / "plain.log") == base


def test_only_consumers_off_the_kill_path_are_niced() -> None:
    assert "rollback" not in NICE and "control" not in NICE
    assert all(value > 0 for value in NICE.values())
