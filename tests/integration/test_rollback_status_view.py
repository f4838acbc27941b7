"""What on-call reads, on a real server: the kill switch, `rollout status` (text and JSON)
after a multi-guard regression, and a dry-run policy judged exactly as the same policy live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, policy_change, runs
from rollout_engine.engine.api.service import ControlApi
from rollout_engine.engine.cli.rollout_status import _print
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import KillSwitch, WouldKill
from tests.integration.test_canary_sim import Rig, make_rig

ALL_BAD = Profile(quality=80.0, latency_ms=2500.0, cost_cents=5.0)
QUIET = {"name": "quiet", "thresholds": {"max_quality_drop": -1, "max_latency_p95_ms": -1, "max_cost_cents": -1},
         "srm": {"enabled": False}}


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data") as r:
        yield r


async def _status(rig: Rig, rollout: str, ready: Any) -> dict[str, Any]:
    """The API's status once the consumer's KV status (published after commits) satisfies ``ready``."""
    deadline = time.monotonic() + 15
    while True:
        reply = await ControlApi(rig.nc).status({"rollout": rollout})
        if ready(reply.get("evaluation") or {}) or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.1)


async def test_three_guard_regression_shows_three_breaches_and_short_guards_read_insufficient(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    await rig.publish([*runs("three", 80, candidate=ALL_BAD), *runs("young", 10)])
    [kill] = rig.commands(KillSwitch)
    assert kill.rollout == "three" and "insufficient: latency 29/30, cost 29/30" in kill.reason

    def breaching(ev: dict[str, Any]) -> bool:
        return sum(g.get("judged") == "breaching" for g in ev.get("guards", {}).values()) == 3

    three = await _status(rig, "three", breaching)
    assert {g: v["judged"] for g, v in three["evaluation"]["guards"].items() if g != "srm"} == dict.fromkeys(
        ("cost", "latency", "quality"), "breaching")
    young = await _status(rig, "young", lambda ev: bool(ev.get("guards")))
    capsys.readouterr()
    _print(three)
    _print(young)
    text = capsys.readouterr().out
    assert "cost=breaching, latency=breaching, quality=breaching" in text
    assert "killed: guards are judged on" in text
    assert "cost=insufficient 5/30, latency=insufficient 5/30, quality=insufficient 5/30" in text
    assert "guards  policy default v0 in force: quality mean drop > 5, latency p95 > 1600ms, cost mean > 3¢" in text


async def test_a_dry_run_policy_decides_as_the_same_policy_live_on_the_same_traffic(rig: Rig) -> None:
    policy = {"name": "small", "last_n": 10, "min_samples": 5, "thresholds": {"max_latency_p95_ms": 1000}}
    dry = policy_change("dry", QUIET)
    await rig.publish([policy_change("live", policy), dry, policy_change("dry", {**policy, "dry_run": True},
                                                                          before=dry.after)])
    for rollout in ("live", "dry"):  # the same traffic (values and times) on both rollouts
        await rig.publish([*runs(rollout, 100), *runs(rollout, 60, candidate=Profile(latency_ms=1200.0), start=100)])
    [kill] = rig.commands(KillSwitch)
    [would] = rig.commands(WouldKill)
    assert kill.time_ms == would.time_ms and kill.breaches == would.breaches
    assert kill.breaches[0].candidate_n == 10  # the dry-run policy's own last_n, not the live one's 100
