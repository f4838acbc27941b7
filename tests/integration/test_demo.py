"""`rollout demo` (what `make run` runs): the engine kills a degrading candidate, in under 60 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_ends_with_a_kill_switch_a_detection_latency_and_a_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(tmp_path), "demo", "--json"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["killed"] is True
    assert 0 < outcome["detection_latency_ms"] < 30_000
    assert outcome["served_candidate_after_kill"] == 0
    applied = outcome["applied"]  # the serving instance and two replicas acknowledged the kill
    assert applied["command"] == "kill_switch" and applied["complete"]
    assert applied["applied"] == applied["following"] == 3 and applied["slowest_ms"] is not None
    assert outcome["breaches"] and all(b["observed"] > b["threshold"] or b["type"] != "threshold"
                                       for b in outcome["breaches"])
    assert outcome["seconds"] < 60
    chart = Path(outcome["chart"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(outcome["report"]).read_text().startswith("#")


def test_documented_coverage_points_at_tests_that_exist() -> None:
    from tests.integration.test_docs_commands import COVERED

    root = Path(__file__).resolve().parents[2]
    for reason in COVERED.values():
        for name in (w.rstrip(").;:") for w in reason.replace(",", " ").split() if w.startswith("tests/")):
            assert (root / name).exists(), f"{reason!r} names a missing test file"
