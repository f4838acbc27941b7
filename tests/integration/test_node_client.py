"""The contract is language-neutral: the Node.js example service (docs/examples/node) buckets
units exactly as the Python SDK, publishes events the engine decodes and the JSON Schemas
accept, and obeys the kill switch the engine fires at its regressing candidate."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.sdk.assignment import bucket, threshold
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import Decision, KillSwitch, Metric, Outcome, decode_message, subjects
from tests.integration.npm import CONTRACT_CHECKS, NODE_EXAMPLE, ROOT, installed, node, run_json
from tests.integration.test_canary_sim import make_rig

ROLLOUT = "planner-node"
_ALPHABET = "abcXYZ019_-.:@/ éüß日本語🎉\u00a0"


def _units(n: int, seed: int = 19) -> list[list[str]]:
    """(rollout, unit) pairs: plain ids, and units of 1-40 characters mixing ASCII, accents,
    CJK, emoji and spaces (murmur3 hashes UTF-8 bytes; a port hashing UTF-16 units differs)."""
    rng = random.Random(seed)
    rollouts = ["planner-v2", "checkout", "search-ranking_3"]
    out = []
    for i in range(n):
        unit = f"user-{i}" if i % 2 else "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 40)))
        out.append([rollouts[i % 3], unit])
    return out


def test_node_bucketing_equals_the_python_sdk_on_100k_units() -> None:
    units = _units(100_000)
    pcts = [i * 0.005 for i in range(20_001)] + [0.07, 12.345, 33.333333, 99.995, -3.0, 150.0]
    got = run_json(NODE_EXAMPLE, "bucketing.js", stdin={"units": units, "pcts": pcts})
    expected = [bucket(r, u) for r, u in units]
    mismatches = [(units[i], got["buckets"][i], b) for i, b in enumerate(expected) if got["buckets"][i] != b]
    assert mismatches == [], f"{len(mismatches)} of {len(units)} units bucket differently, e.g. {mismatches[:3]}"
    assert got["thresholds"] == [threshold(p) for p in pcts]  # ties round to even, as Python's round()


async def _read(stream: asyncio.StreamReader, lines: list[dict[str, Any]]) -> None:
    while line := await stream.readline():
        lines.append(json.loads(line))


async def test_node_service_is_killed_by_the_engine_and_switches_to_baseline(
        fresh_server: EmbeddedServer, tmp_path: Path) -> None:
    async with make_rig(fresh_server, tmp_path / "data") as rig:  # rollback + control consumers
        await ControlApi(rig.nc, rig.js).config(
            {"rollout": ROLLOUT, "actor": "test", "canary_pct": 50, "create": True, "reason": "canary at 50%"})
        service = await asyncio.create_subprocess_exec(
            node(), "service.js", "--rollout", ROLLOUT, "--regress", "--after-kill", "200", "--max-seconds", "30",
            cwd=installed(NODE_EXAMPLE), env={**os.environ, "ROLLOUT_NATS_URL": fresh_server.url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        lines: list[dict[str, Any]] = []
        reader = asyncio.create_task(_read(service.stdout, lines))
        code = await asyncio.wait_for(service.wait(), 40)
        await reader
        stderr = (await service.stderr.read()).decode()
        assert code == 0, f"node service failed: {stderr[-2000:]}"
        await rig.settle()
        log = await _log(rig.js)

    done = lines[-1]
    assert done["event"] == "done" and done["flushed"] is True
    assert done["served"]["candidate"] > 0  # it did serve the candidate before the kill
    assert done["under_kill_switch"] == {"baseline": 200, "candidate": 0}  # and never after
    assert any(e["event"] == "control" and e["state"]["kill_switch"] for e in lines)
    [kill] = [e for e in log["events"] if isinstance(e, KillSwitch)]
    assert kill.producer == "rollback" and kill.breaches  # the engine's own verdict, with its numbers
    decisions = [e for e in log["events"] if isinstance(e, Decision)]
    assert {d.producer for d in decisions} == {"node-service"}
    assert sum(isinstance(e, Outcome) for e in log["events"]) == len(decisions) == sum(
        isinstance(e, Metric) for e in log["events"])
    assert len(decisions) == done["served"]["baseline"] + done["served"]["candidate"]
    in_order = sorted(decisions, key=lambda d: d.id)  # ids sort by time, then by a per-process counter
    first_killed = next(i for i, d in enumerate(in_order) if d.reason == "kill_switch")
    assert {(d.variant, d.reason) for d in in_order[first_killed:]} == {("baseline", "kill_switch")}
    assert len(in_order) - first_killed == 200
    # the same bytes, through the JSON Schemas of docs/schemas (ajv, draft 2020-12)
    report = run_json(CONTRACT_CHECKS, "validate-events.mjs",
                      stdin={"schemas": str(ROOT / "docs" / "schemas"), "events": log["raw"]})
    assert report["errors"] == [] and report["checked"] == len(log["raw"]) > 0


async def _log(js: Any) -> dict[str, list[Any]]:
    """The rollout's messages in the log: decoded strictly by the engine's codec (any bad
    event raises), and as plain data for the schema check."""
    events: list[Any] = []
    raw: list[Any] = []
    info = await js.stream_info(subjects.LOG_STREAM)
    for seq in range(1, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        if subjects.parse(msg.subject).rollout != ROLLOUT:
            continue
        events.extend(decode_message(msg.data))
        if msg.subject.startswith(f"{subjects.ROOT}.evt."):
            items = msgspec.msgpack.decode(msg.data)
            raw.extend(items if isinstance(items, list) else [items])
    return {"events": events, "raw": raw}


@pytest.mark.parametrize("field", ["unit", "verdict", "value"])
def test_node_client_refuses_a_bad_event_before_publishing(field: str) -> None:
    """Validation happens in the service, naming the field, as the Python SDK does."""
    script = {
        "unit": "events.decision({rollout: 'r', producer: 'p', unit: 'a\\u0001b', choice: {variant: 'v', reason: 'default', propensity: 1}, state: {canary_pct: 0, config_version: 0}})",
        "verdict": "events.outcome({rollout: 'r', producer: 'p', decisionId: 'd', variant: 'v', verdict: 'great'})",
        "value": "events.metric({rollout: 'r', producer: 'p', variant: 'v', name: 'latency_ms', value: NaN})",
    }[field]
    code = (f"import * as events from './src/events.js';\n"
            f"try {{ {script}; console.log(JSON.stringify({{error: null}})); }}\n"
            f"catch (err) {{ console.log(JSON.stringify({{error: err.message}})); }}")
    result = run_json(NODE_EXAMPLE, "--input-type=module", "-e", code)
    assert result["error"] and result["error"].startswith(f"{field}:")
