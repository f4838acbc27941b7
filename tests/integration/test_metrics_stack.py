"""`rollout up` end to end: the API child answers, /metrics merges the consumer processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROLLOUT = [sys.executable, "-m", "rollout_engine.engine.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.slow
def test_rollout_up_serves_the_api_and_a_promtool_clean_exposition(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ROLLOUT_PORT": "0", "ROLLOUT_METRICS_PORT": str(port), "ROLLOUT_ACTOR": "oncall"}
    up = subprocess.Popen([*ROLLOUT, "--data-dir", str(tmp_path), "up"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        while "Ctrl-C stops all" not in line:
            line = up.stdout.readline()
            assert line or up.poll() is None, "rollout up exited early"
        cli = [*ROLLOUT, "--data-dir", str(tmp_path)]
        deadline = time.monotonic() + 30
        while True:  # the API child takes a moment to start
            made = subprocess.run([*cli, "set", "stack-demo", "--canary-pct", "5", "--create"],
                                  capture_output=True, text=True, env=env, timeout=30)
            if made.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert made.returncode == 0, made.stderr
        killed = subprocess.run([*cli, "kill", "stack-demo", "--reason", "drill"], capture_output=True, text=True,
                                env=env, timeout=30)
        assert killed.returncode == 0, killed.stderr
        text, samples = "", {}
        while time.monotonic() < deadline + 30:
            text = _scrape(port)
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(text) for s in f.samples}
            kills = samples.get(("rollout_kill_switches_total", (("rollout", "stack-demo"), ("source", "manual"))))
            consumed = [k for k in samples if k[0] == "rollout_consumer_events_total"]
            niced = {dict(k[1])["consumer"] for k in samples if k[0] == "rollout_consumer_niceness"}
            if kills == 1 and consumed and {"rollback", "canary_stats"} <= niced:
                break
            time.sleep(0.5)
        assert samples.get(("rollout_kill_switches_total", (("rollout", "stack-demo"), ("source", "manual")))) == 1
        assert {dict(k[1])["consumer"] for k in samples if k[0] == "rollout_consumer_lag_messages"} >= {"control"}
        assert any(k[0] == "rollout_consumer_events_total" for k in samples), "consumer processes not merged"
        assert ("rollout_consumer_position", (("consumer", "control"),)) in samples
        # The kill path asks for a larger CPU share (kill_path_nice, -5; granted to root), bulk folds yield it.
        base = os.nice(0)
        assert samples[("rollout_consumer_niceness", (("consumer", "rollback"),))] == (
            min(base, -5) if os.geteuid() == 0 else base)
        assert samples[("rollout_consumer_niceness", (("consumer", "canary_stats"),))] == base + 5
        assert not [k for k in samples if "pid" in dict(k[1])], "a pid label makes new series on every restart"
        promtool = shutil.which("promtool")
        assert promtool, "promtool is needed (apt-get install prometheus; .ci/run installs it)"
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=30)
    assert up.returncode == 0
