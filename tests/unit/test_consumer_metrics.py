"""Consumer metrics: one series per consumer across restarts, and where /metrics is served."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from rollout_engine.engine.stack.consumer_metrics import (
    MetricsPortInUse,
    metrics_port,
    serve_metrics,
)

_CHILD = """
import sys
from prometheus_client import CollectorRegistry
from rollout_engine.engine.stack.consumer_metrics import ConsumerMetrics
m = ConsumerMetrics(CollectorRegistry())
m.position.labels("control").set(int(sys.argv[1]))
m.stalled.labels("control").set(0)
"""


def test_a_restarted_consumer_continues_its_series_without_a_pid_label(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for position in (5, 9):  # the first process, then its restart (another pid)
        subprocess.run([sys.executable, "-c", _CHILD, str(position)], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    samples = [s for f in registry.collect() if f.name in ("rollout_consumer_position", "rollout_consumer_stalled")
               for s in f.samples]
    assert {s.name: s.labels for s in samples} == {"rollout_consumer_position": {"consumer": "control"},
                                                   "rollout_consumer_stalled": {"consumer": "control"}}
    assert [s.value for s in samples if s.name == "rollout_consumer_position"] == [9]


def test_metrics_port_flag_then_setting_and_none_under_rollout_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert metrics_port(9100, 9464) == 9100
    assert metrics_port(0, 9464) == 0
    assert metrics_port(None, 9464) == 9464  # the documented metrics_port setting
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/x")  # a child of `rollout up`
    assert metrics_port(None, 9464) == 0


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortInUse, match=f"127.0.0.1:{port}.*--metrics-port"):
            serve_metrics(port)


def test_one_name_per_concept_across_the_consumer_and_engine_metrics() -> None:
    """No pair such as ``..._lag`` and ``..._lag_messages``: one measure, one name."""
    root = Path(__file__).resolve().parents[2]
    source = "\n".join(p.read_text() for d in ("engine", "consumers") for p in (root / d).rglob("*.py"))
    names = re.findall(r"(?:Counter|Gauge|Histogram|MetricFamily)\(\s*\"(rollout_[a-z0-9_]+)\"", source)
    assert "rollout_consumer_lag_messages" in names and "rollout_recheck_pending" in names

    def stem(name: str) -> str:
        return name.removesuffix("_total").removesuffix("_messages").replace("rechecks", "recheck")

    stems = [stem(n) for n in names]
    assert len(set(stems)) == len(stems), sorted(n for n in names if stems.count(stem(n)) > 1)
