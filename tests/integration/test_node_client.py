"""The contract is language-neutral: the Node.js example service (docs/examples/node) buckets
units exactly as the Python SDK, publishes events the engine decodes and the JSON Schemas
accept, and obeys the kill switch the engine fires at its regressing candidate."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.sdk.assignment import bucket, threshold
from rollout_engine.engine.sdk.signatures import ControlVerifier
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys
from rollout_engine.events import (
    ControlState,
    Decision,
    KillSwitch,
    Metric,
    Outcome,
    decode_message,
    encode,
    subjects,
    transitions,
)
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
        signer = CommandSigner.load(rig.settings)  # the consumers' key: the same data directory
        await publish_keys(rig.js, signer.ring)  # as `rollout up` does before anything is signed
        await ControlApi(rig.nc, rig.js, signer=signer).config(
            {"rollout": ROLLOUT, "actor": "test", "canary_pct": 50, "create": True, "reason": "canary at 50%"})
        service = await asyncio.create_subprocess_exec(  # verifying every command: the engine signs them all
            node(), "service.js", "--rollout", ROLLOUT, "--regress", "--after-kill", "200", "--max-seconds", "30",
            "--require-signed",
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
    assert done["refused"] == {"unsigned": 0, "unknown_key": 0, "bad_signature": 0}, stderr  # keys read from KV
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


def test_node_verifies_signatures_as_the_python_sdk_and_refuses_forged_resumes() -> None:
    """Node's built-in crypto gives the Python verifier's verdict on every kind of message;
    in secure mode a forged resume or config is never applied, a forged kill only stops."""
    engine, intruder = CommandSigner.ephemeral(), CommandSigner.ephemeral()
    start = ControlState(canary_pct=50.0, config_version=1)
    kill = transitions.kill_command(start, id="k1", rollout=ROLLOUT, time_ms=1, producer="rollback", actor="rollback",
                                    reason="quality")
    resume = transitions.resume_command(kill.after, 50.0, id="r1", rollout=ROLLOUT, time_ms=2, producer="x",
                                        actor="mallory", reason="forged")
    config = transitions.config_command(kill.after, id="c1", rollout=ROLLOUT, time_ms=3, producer="x",
                                        actor="mallory", reason="forged", canary_pct=100.0)
    other_kill = transitions.kill_command(start, id="k2", rollout="other", time_ms=4, producer="x", actor="mallory",
                                          reason="forged")
    setup = transitions.config_command(ControlState(), id="c0", rollout="other", time_ms=0, producer="api",
                                       actor="alice", reason="canary", canary_pct=30.0)

    def msg(event: Any, signer: CommandSigner | None, partition: str = "", tamper: bool = False) -> dict[str, Any]:
        subject = subjects.for_event(event)
        data = encode(event)
        headers = signer.headers(subject, data) if signer else {}
        if tamper:
            data = data.replace(b"quality", b"qualitx")
        return {"subject": subject + partition, "data": base64.b64encode(data).decode(), "headers": headers}

    messages = [
        msg(setup, engine),                  # signed: applied (other at 30%)
        msg(kill, engine, partition=".3"),   # signed, on a partitioned log's subject: applied
        msg(resume, None),                   # unsigned resume: refused
        msg(config, intruder),               # signed by a key not in the ring: refused
        msg(resume, engine, tamper=False) | {"headers": {**engine.headers(subjects.for_event(config),
                                                                           encode(config))}},  # another body's sig
        msg(kill, engine, tamper=True),      # bytes changed after signing
        msg(other_kill, None),               # unsigned kill: it still stops the candidate, nothing else
    ]
    ring = msgspec.to_builtins(engine.ring)
    got = run_json(NODE_EXAMPLE, "verify.js", stdin={"ring": ring, "requireSigned": True, "messages": messages})
    python = ControlVerifier(require_signed=True, ring=engine.ring)
    expected = [python.check(m["subject"], base64.b64decode(m["data"]), m["headers"]) for m in messages]
    assert got["verdicts"] == expected == [None, None, "unsigned", "unknown_key", "bad_signature", "bad_signature",
                                           "unsigned"]
    assert got["states"][ROLLOUT]["kill_switch"] is True and got["states"][ROLLOUT]["canary_pct"] == 0
    assert got["states"]["other"]["kill_switch"] is True and got["states"]["other"]["canary_pct"] == 0
    assert got["states"]["other"]["config_version"] == 1  # the held state, stopped; not the forged after-state
    assert got["refused"] == {"unsigned": 2, "unknown_key": 1, "bad_signature": 2}
    lax = run_json(NODE_EXAMPLE, "verify.js", stdin={"ring": ring, "requireSigned": False, "messages": messages})
    lax_python = ControlVerifier(require_signed=False, ring=engine.ring)
    assert lax["verdicts"] == [lax_python.check(m["subject"], base64.b64decode(m["data"]), m["headers"])
                               for m in messages] == [None, None, None, None, "bad_signature", "bad_signature", None]


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
