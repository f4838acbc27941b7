"""Export the log, replay it: every registered projection gets the live consumers' digest."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from rollout_engine.consumers import registry
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.logtools.export import ExportError, read_export, write_export
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.logtools.replay import (
    make_projections,
    messages_from_file,
    replay_messages,
    write_store,
)
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import subjects
from rollout_engine.events.message import log_messages


async def _live_digests(settings, js) -> dict[str, tuple[int, str]]:
    """Run every registered consumer until it has folded the whole log (emitted events too)."""
    digests: dict[str, tuple[int, str]] = {}
    for _round in range(5):
        last = (await js.stream_info(subjects.LOG_STREAM)).state.last_seq
        for spec in registry.specs():
            consumer = registry.build(spec.name, settings)
            summary = await consumer_runner(consumer, settings, until_idle=True, fetch_timeout=0.2).run()
            digests[spec.name] = (summary.seq, summary.digest)
        if all(seq == last for seq, _ in digests.values()) and \
                (await js.stream_info(subjects.LOG_STREAM)).state.last_seq == last:
            return digests
    raise AssertionError(f"consumers did not catch up: {digests}")


@pytest.fixture
async def recorded(fresh_server, tmp_path):
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"))
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    api = ControlApi(nc, js)
    await api.config({"rollout": "shop", "actor": "alice", "canary_pct": 50, "create": True})
    events = runs("shop", 120, canary_pct=50, candidate=Profile(quality=82.0))
    events += runs("search", 80, canary_pct=20)
    for subject, payload in log_messages(events, 40):
        await js.publish(subject, payload)
    await js.publish(subjects.event("shop", "metric"), b"\xc1 not msgpack")  # a dead letter
    await api.rollback({"rollout": "search", "actor": "bob", "reason": "manual check"})
    yield settings, nc, js
    await nc.close()


async def test_replay_of_an_export_gives_the_live_digests(recorded, tmp_path) -> None:
    settings, _nc, js = recorded
    live = await _live_digests(settings, js)
    assert set(live) == set(registry.names()) and len(live) >= 2
    for name in ("log.msgpack", "log.jsonl"):
        summary = await write_export(read_messages(js), tmp_path / name)
        assert summary.last_seq == next(iter(live.values()))[0] and summary.rejected == 1
        _footer, messages = messages_from_file(tmp_path / name)
        result = replay_messages(messages, make_projections(settings=settings))
        assert result.digests == {n: d for n, (_s, d) in live.items()}, name
        store = write_store(result, tmp_path / f"{name}.sqlite")
        with pytest.raises(FileExistsError):
            write_store(result, store)

    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", settings.data_dir, "replay",
           str(tmp_path / "log.msgpack"), "--json", "--out", str(tmp_path / "cli.sqlite")]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr  # no progress bar or colour on a pipe
    assert json.loads(proc.stdout)["digests"] == {n: d for n, (_s, d) in live.items()}

    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir", settings.data_dir,
           "replay", "--stream", "--json"]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digests"] == {n: d for n, (_s, d) in live.items()}


async def test_an_edited_export_is_refused(recorded, tmp_path) -> None:
    _settings, _nc, js = recorded
    for name in ("log.jsonl", "log.msgpack"):
        path = tmp_path / name
        await write_export(read_messages(js), path)
        blob = bytearray(path.read_bytes())
        index = blob.find(b"shop", len(blob) // 2)
        blob[index:index + 4] = b"shoq"
        path.write_bytes(bytes(blob))
        with pytest.raises(ExportError, match="checksum mismatch"):
            read_export(path)
    truncated = tmp_path / "short.msgpack"
    truncated.write_bytes((tmp_path / "log.msgpack").read_bytes()[:-10])
    with pytest.raises(ExportError):
        read_export(truncated)
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "replay", str(tmp_path / "log.jsonl")]
    proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "checksum mismatch" in proc.stderr
