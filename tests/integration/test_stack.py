"""The embedded stack: server lifecycle, provisioning, `rollout up` / `rollout status`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout_engine.engine.bus import BusUnavailable, connect, provision
from rollout_engine.engine.cli.schemas import render_schemas, stale_schemas
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.server import EmbeddedServer, ServerError
from rollout_engine.events import subjects

ROLLOUT = [sys.executable, "-m", "rollout_engine.engine.cli"]


def _server_pids(config_dir: Path | None = None) -> set[int]:
    """nats-server processes, or only those started with a config under ``config_dir``
    (other tests start servers at the same time; only ours matter)."""
    pattern = f"nats-server -c {config_dir}" if config_dir else "nats-server"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_committed_schemas_are_fresh() -> None:
    target = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    stale = stale_schemas(target)
    assert not stale, f"docs/schemas is stale for {stale}: run `make schemas`"
    assert sorted(p.name for p in target.glob("*.schema.json")) == sorted(render_schemas())


def test_schema_check_ignores_how_a_docstring_was_indented(tmp_path: Path) -> None:
    """msgspec 0.22 kept a docstring's indentation in descriptions, 0.23 dedents it: same meaning."""
    for name, body in render_schemas().items():
        document = json.loads(body)
        if "description" in document:
            document["description"] = document["description"].replace(" ", "\n    ", 3)
        (tmp_path / name).write_text(json.dumps(document))
    assert stale_schemas(tmp_path) == []
    first = sorted(render_schemas())[0]
    changed = json.loads((tmp_path / first).read_text())
    changed["required"] = [*changed.get("required", []), "invented_field"]
    (tmp_path / first).write_text(json.dumps(changed))
    assert stale_schemas(tmp_path) == [first]


def test_schema_check_command_fails_on_a_stale_file(tmp_path: Path) -> None:
    subprocess.run([*ROLLOUT, "schemas", "--out", str(tmp_path)], check=True, capture_output=True)
    ok = subprocess.run([*ROLLOUT, "schemas", "--out", str(tmp_path), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0
    (tmp_path / "decision.schema.json").write_text("{}")
    stale = subprocess.run([*ROLLOUT, "schemas", "--out", str(tmp_path), "--check"], capture_output=True, text=True)
    assert stale.returncode == 2 and "stale" in stale.stderr


async def test_provisioning_is_idempotent_and_keeps_operator_tuning(settings) -> None:
    nc = await connect(settings)
    js = nc.jetstream()
    try:
        await provision(js, settings)
        info = await js.stream_info(subjects.LOG_STREAM)
        info.config.max_msgs = 123_456  # an operator's tuning
        await js.update_stream(info.config)
        assert await provision(js, settings) == []
        again = await js.stream_info(subjects.LOG_STREAM)
        assert again.config.max_msgs == 123_456
        assert set(subjects.LOG_SUBJECTS) <= set(again.config.subjects)
        await js.key_value(subjects.STATE_BUCKET)
    finally:
        await nc.close()


async def test_connect_without_a_server_fails_fast_with_advice(tmp_path: Path) -> None:
    settings = load_settings(env={}, nats_url="nats://127.0.0.1:1", connect_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(BusUnavailable, match="rollout up"):
        await connect(settings)
    assert time.monotonic() - start < 10


def test_embedded_server_refuses_a_public_bind_without_credentials(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="loopback"):
        EmbeddedServer(tmp_path, host="0.0.0.0")


def test_server_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time; from rollout_engine.engine.stack.server import EmbeddedServer\n"
        f"s = EmbeddedServer({str(tmp_path)!r}, port=0); s.start()\n"
        "print(s.process.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and child_pid in _server_pids():
        time.sleep(0.05)
    assert child_pid not in _server_pids()


@pytest.mark.slow
def test_rollout_up_then_status_lists_streams_and_ctrl_c_leaves_no_server(tmp_path: Path) -> None:
    env = {**os.environ, "ROLLOUT_PORT": "0"}
    up = subprocess.Popen(
        [*ROLLOUT, "--data-dir", str(tmp_path), "up"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        started = time.monotonic()
        line = ""
        while "Ctrl-C stops all" not in line:
            line = up.stdout.readline()
            assert line or up.poll() is None, "rollout up exited early"
        assert time.monotonic() - started < 15
        assert _server_pids(tmp_path), "rollout up runs its nats-server under the data dir"
        status = subprocess.run(
            [*ROLLOUT, "--data-dir", str(tmp_path), "status", "--json"],
            capture_output=True, text=True, timeout=30,
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        names = {s["name"] for s in report["streams"] if s["exists"]}
        assert {subjects.LOG_STREAM, subjects.DLQ_STREAM} <= names
        human = subprocess.run([*ROLLOUT, "--data-dir", str(tmp_path), "status"], capture_output=True, text=True)
        assert "RO_LOG" in human.stdout and "\x1b[" not in human.stdout  # no colour into a pipe
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=30)
    assert up.returncode == 0
    assert _server_pids(tmp_path) == set()
    assert not (tmp_path / "nats.url").exists()


def test_status_without_a_server_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ROLLOUT, "--nats-url", "nats://127.0.0.1:1", "status"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "ROLLOUT_CONNECT_TIMEOUT_S": "0.5"},
    )
    assert result.returncode == 2
    assert "no NATS server answered" in result.stderr and "Traceback" not in result.stderr


def test_every_command_has_help() -> None:
    from rollout_engine.engine.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    # One process proves the entry point; each command's help page is rendered in-process
    # (argparse formats it the same way; a process per command cost about a second each).
    result = subprocess.run([*ROLLOUT, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "usage: rollout" in result.stdout
    for name in commands:
        page = io.StringIO()
        with contextlib.redirect_stdout(page), pytest.raises(SystemExit) as exited:
            build_parser().parse_args([name, "--help"])
        assert exited.value.code == 0 and "usage: rollout" in page.getvalue(), name
