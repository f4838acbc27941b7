"""The kill-switch propagation alert: valid, unit-tested by promtool, loaded by compose,
and reading a metric the engine exports.

promtool comes from Debian's ``prometheus`` package (``make tools``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from rollout_engine.engine.stack.propagation_metrics import PropagationMetrics

PROM = Path(__file__).resolve().parents[2] / "compose" / "prometheus"
RULES, TESTS = PROM / "propagation.rules.yml", PROM / "propagation.rules.test.yml"


def _promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is needed: `make tools` installs Debian's prometheus package"
    return subprocess.run([tool, *argv], cwd=PROM, capture_output=True, text=True, timeout=60)


def test_the_rule_is_valid() -> None:
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0 and "SUCCESS: 1 rules found" in done.stdout, done.stdout + done.stderr


def test_promtool_unit_tests_fire_and_clear_the_alert() -> None:
    done = _promtool("test", "rules", TESTS.name)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    cases = yaml.safe_load(TESTS.read_text())["tests"][0]["alert_rule_test"]
    assert [bool(c["exp_alerts"]) for c in cases] == [False, True, False]


def test_the_alert_reads_a_metric_the_engine_exports() -> None:
    rule = yaml.safe_load(RULES.read_text())["groups"][0]["rules"][0]
    assert rule["alert"] == "RolloutKillNotApplied"
    exported = {family.name for family in PropagationMetrics().collect()}
    used = set(re.findall(r"rollout_[a-z_]+", rule["expr"]))
    assert used and used <= exported, used - exported


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert RULES.name in config["rule_files"]
    compose = yaml.safe_load((PROM.parent / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert f"./prometheus/{RULES.name}:/etc/prometheus/{RULES.name}:ro" in volumes
