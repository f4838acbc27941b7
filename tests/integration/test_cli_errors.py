"""What a newcomer trips on first: pipes, unknown names, JSON errors, times, ports, help."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys

from rollout_engine.engine.cli import build_parser
from rollout_engine.events import Metric, encode, subjects
from rollout_engine.events.ids import new_event_id
from tests.integration.test_cli import rollout_cli

ROLLOUT = [sys.executable, "-m", "rollout_engine.engine.cli"]


def _read_one_line_then_close(argv: list[str]) -> tuple[str, int, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` does
    err = proc.stderr.read()
    return first, proc.wait(timeout=30), err


async def test_events_into_a_reader_that_stops_early_exits_quietly(api, settings, rollout_id) -> None:
    """`rollout events X | head -1`: the pipe closes mid-output (far more than a pipe buffer)."""
    _nc, js = api
    for i in range(1200):
        await js.publish(subjects.event(rollout_id, "metric"), encode(Metric(
            id=new_event_id(), rollout=rollout_id, time_ms=1_000 + i, producer="svc", variant="candidate",
            name="latency_ms", value=float(i))))
    first, code, err = await asyncio.to_thread(
        _read_one_line_then_close, [*ROLLOUT, "--nats-url", settings.nats_url, "events", rollout_id])
    assert "metric" in first
    assert code == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


async def test_unknown_rollouts_fail_with_a_json_error_and_say_which_flag_creates_one(api, settings, rollout_id) -> None:
    unknown = "unknown-" + rollout_id
    text = await rollout_cli(settings, "events", unknown, check=False)
    assert text.returncode == 2 and "unknown rollout" in text.stderr and text.stdout == ""
    for argv in (("events", unknown, "--json"), ("kill", unknown, "--reason", "drill", "--json")):
        proc = await rollout_cli(settings, *argv, check=False)
        assert proc.returncode == 2 and proc.stdout == "", proc
        error = json.loads(proc.stderr)["error"]
        assert error["code"] == "not_found" and "unknown rollout" in error["message"], error
    assert f"rollout set {unknown} --canary-pct N --create" in error["message"]
    usage = await rollout_cli(settings, "status", "--no-such-flag", "--json", check=False)
    assert usage.returncode == 2 and json.loads(usage.stderr)["error"]["code"] == "usage"


async def test_status_prints_when_the_last_command_happened_not_epoch_milliseconds(api, settings, rollout_id) -> None:
    await rollout_cli(settings, "set", rollout_id, "--canary-pct", "5", "--create")
    await rollout_cli(settings, "kill", rollout_id, "--reason", "drill")
    out = (await rollout_cli(settings, "status", rollout_id)).stdout
    assert re.search(r"kill_switch by cli-test at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+s ago\)", out), out
    assert "time_ms" not in out


def test_a_taken_port_is_one_line_with_the_fix(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*ROLLOUT, "--data-dir", str(tmp_path), "up", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "already in use" in proc.stderr and "--port 0" in proc.stderr, proc.stderr


def test_help_is_plain_text_for_users() -> None:
    parser = build_parser()
    pages = [parser.format_help()]
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands.values():
        pages.append(command.format_help())
        inner = [a for a in command._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
        pages.extend(sub.format_help() for a in inner for sub in a.choices.values())
    for page in pages:
        for markup in ("``", ":func:", ":class:", "seed 0", "issue "):
            assert markup not in page, (markup, page[:300])
    assert "\n\nWithout ROLLOUT" in commands["status"].format_help(), "descriptions keep their paragraphs"
