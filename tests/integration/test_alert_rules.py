"""The Prometheus alerting rules: valid, unit-tested by promtool, loaded by the compose stack.

``promtool check rules`` and ``promtool test rules`` run on the committed files (promtool
comes from Debian's ``prometheus`` package, installed by ``make tools``); beside them this
checks that every alert has a test that makes it fire, that every metric an alert reads
is exported, and that the Grafana kill annotation is the expression the tests prove.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "compose" / "prometheus"
RULES, TESTS = PROM / "alerts.yml", PROM / "alerts.test.yml"

EXPORTED_ELSEWHERE = {
    "process_start_time_seconds": "prometheus-client's process collector in every consumer process",
}
"""Metrics an alert reads that this repository's engine/ and consumers/ do not define by name."""


def _promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is needed: `make tools` installs Debian's prometheus package"
    return subprocess.run([tool, *argv], cwd=PROM, capture_output=True, text=True, timeout=60)


def _alerts() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_rules_are_valid() -> None:
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0 and "SUCCESS: 6 rules found" in done.stdout, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", TESTS.name)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_has_a_test_that_makes_it_fire() -> None:
    fired = {case["alertname"] for group in yaml.safe_load(TESTS.read_text())["tests"]
             for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert set(_alerts()) == {"RolloutKillSwitchFired", "RolloutConsumerLagGrowing", "RolloutConsumerCrashLooping",
                              "RolloutDeadLetters", "RolloutNoTicks", "RolloutSampleRatioMismatch"}
    assert fired == set(_alerts())


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name, "propagation.rules.yml"]  # the second: test_propagation_rules.py
    compose = (ROOT / "compose" / "docker-compose.yml").read_text()
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0 and "2 rule files found" in done.stdout, done.stdout + done.stderr


def test_alerts_read_metrics_that_exist() -> None:
    source = "\n".join(p.read_text() for d in ("engine", "consumers") for p in (ROOT / d).rglob("*.py"))
    names = {re.sub(r"_(total|bucket|sum|count)$", "", n)
             for expr in _alerts().values() for n in re.findall(r"\b(?:rollout|process)_[a-z0-9_]+", expr)}
    missing = sorted(n for n in names - set(EXPORTED_ELSEWHERE)
                     if f'"{n}"' not in source and f'"{n}_total"' not in source)
    assert not missing, f"alerts read metrics nobody exports: {missing}"


def test_the_dashboard_kill_annotation_is_the_tested_expression() -> None:
    dashboard = json.loads((ROOT / "compose" / "grafana" / "dashboards" / "rollout-engine.json").read_text())
    [kills] = [a for a in dashboard["annotations"]["list"] if a["name"] == "kill switches"]
    tested = {case["expr"] for group in yaml.safe_load(TESTS.read_text())["tests"]
              for case in group.get("promql_expr_test", [])}
    assert kills["expr"] in tested
