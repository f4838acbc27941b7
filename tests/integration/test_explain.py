"""``rollout explain`` on a real log: every kill verifies and reproduces offline; tampering is named.

A private server runs the rollback and control consumers (signed relay); three rollouts
regress in three ways, one under a policy of its own. The log is exported with
``rollout export`` and each kill explained by ``rollout explain`` pointed at an
unreachable server: it needs none.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.consumers.folding import read_message
from rollout_engine.consumers.rollback.scenario import Profile, policy_change, runs
from rollout_engine.engine.logtools.export import read_export, write_export
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import (
    KillSwitch,
    LogMessage,
    Outcome,
    encode,
    encode_batch,
    subjects,
    transitions,
)
from tests.integration.test_canary_sim import Rig, make_rig

NO_SERVER = "nats://127.0.0.1:9"  # nothing listens there: explain must not need a server


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data") as r:
        yield r


def _cli(*args: str, data_dir: str, url: str = NO_SERVER) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "--data-dir", data_dir, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def _explain(export: Path, command_id: str, data_dir: str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.to_thread(_cli, "explain", command_id, "--file", str(export), "--json", *extra,
                                   data_dir=data_dir)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


async def _messages(items: list[LogMessage]):  # type: ignore[no-untyped-def]
    for item in items:
        yield item


async def test_every_kill_of_an_exported_log_is_explained_offline_and_tampering_is_named(
        rig: Rig, tmp_path: Path) -> None:
    strict = {"name": "strict", "thresholds": {"max_cost_cents": 2.5}}
    await rig.publish([policy_change("pay", strict),
                       *runs("shop", 100, canary_pct=50, candidate=Profile(quality=82.0)),
                       *runs("search", 100, canary_pct=50, candidate=Profile(latency_ms=1900.0)),
                       *runs("pay", 120, canary_pct=50, candidate=Profile(cost_cents=2.9, quality=93.0))])
    kills = {k.rollout: k for k in rig.commands(KillSwitch)}
    assert set(kills) == {"shop", "search", "pay"}
    forged = transitions.kill_command(kills["shop"].after, id="forged-kill-shop", rollout="shop",
                                      time_ms=kills["shop"].time_ms + 1, producer="rollback", actor="rollback",
                                      reason="forged", cause_id=kills["shop"].cause_id)
    await rig.js.publish(subjects.for_event(forged), encode(forged))  # no signature: anyone on an open server
    await rig.settle()

    data_dir = rig.settings.data_dir
    export = tmp_path / "audit.msgpack"
    proc = await asyncio.to_thread(_cli, "export", str(export), data_dir=data_dir, url=rig.settings.nats_url)
    assert proc.returncode == 0, proc.stderr

    for rollout, kill in kills.items():
        code, ex = await _explain(export, kill.id, data_dir)
        assert code == 0 and ex["ok"], (rollout, ex["faults"])
        assert ex["signature"].startswith("verified") and ex["recomputed"].startswith("equal")
        assert [g["guard"] for g in ex["guards"]] == [b.guard for b in kill.breaches]
        assert ex["evidence"] and all(e["ok"] for e in ex["evidence"])
        assert ex["decisive"]["id"] == kill.cause_id
    code, ex = await _explain(export, kills["pay"].id, data_dir, "--keys", str(Path(data_dir) / "signing-keys.json"))
    assert code == 0 and (ex["policy"]["name"], ex["policy"]["version"]) == ("strict", 1)
    assert ex["guards"][0]["guard"] == "cost"

    code, ex = await _explain(export, "forged-kill-shop", data_dir)
    assert code == 1 and ex["signature"].startswith("unsigned")

    # one candidate sample of the shop kill's evidence is changed, and the export rewritten consistently
    header, messages, _footer = read_export(export)
    [evidence] = [e for e in kills["shop"].evidence if e.variant == "candidate"]
    judged = [m for m in messages if evidence.first_seq <= m.seq <= evidence.last_seq and m.subject.startswith(
        subjects.event("shop", "outcome")) and any(isinstance(e, Outcome) and e.variant == "candidate"
                                                   for e in read_message(m)[0])]
    target = judged[len(judged) // 2]
    [event] = read_message(target)[0]
    altered = msgspec.structs.replace(event, quality=96.0)
    tampered = [LogMessage(m.seq, m.subject, encode_batch([altered]), m.time_ms, m.headers) if m is target else m
                for m in messages]
    await write_export(_messages(tampered), tmp_path / "tampered.msgpack", meta=header)
    code, ex = await _explain(tmp_path / "tampered.msgpack", kills["shop"].id, data_dir)
    assert code == 1 and not ex["ok"]
    assert any(f"seq {target.seq} id {event.id}" in f for f in ex["faults"]), ex["faults"]
    # the other kills do not read that event: they still explain
    code, ex = await _explain(tmp_path / "tampered.msgpack", kills["search"].id, data_dir)
    assert code == 0, ex["faults"]
