"""The steering and escalation presets at their boundaries, through the real consumers and API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, policy_change, resume, runs
from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.api.service import serve_api
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import Escalation, KillSwitch
from tests.integration.test_canary_sim import Rig, make_rig

R = "steer"
BAD = Profile(quality=80.0)


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data") as r:
        yield r


async def test_steering_preset_steers_after_2_s_sustained_and_recovers_after_3_s(rig: Rig) -> None:
    # switched live (the preset is a dry run until then), on a 10-sample window so a breach starts and ends fast
    policy = {"preset": "steering", "dry_run": False, "last_n": 10, "min_samples": 10}
    short = runs(R, 150, candidate=BAD, start=40)  # 1.5 s of breach: shorter than the 2 s sustain
    await rig.publish([policy_change(R, policy), *runs(R, 40), *short, *runs(R, 300, start=190)])
    assert rig.commands() == []
    long = runs(R, 300, candidate=BAD, start=490)  # 3 s: sustained
    await rig.publish(long)
    [kill] = rig.commands()
    assert isinstance(kill, KillSwitch) and kill.reason.endswith("[policy steering v1]")
    first_fail = long[4 * 7].time_ms  # the 4th bad candidate sample of 10 tips the mean drop over 5
    assert 2_000 <= kill.time_ms - first_fail < 2_100
    # judged on after the kill: healthy in-flight samples, 30 s hold-down, then 3 s under the recovery threshold
    t = kill.time_ms
    t0 = t + 1 - 7_900  # the runs' clock continues from the kill (run i at t0 + 10 ms * i)
    await rig.publish(runs(R, 2_900, start=790, t0=t0))  # 29 s: within the hold-down
    assert rig.rollback.status(R)["guards"]["quality"]["state"] == "alarm"
    await rig.publish(runs(R, 500, start=3_690, t0=t0))  # to 34 s: 30 s hold-down, then 3 s passing
    status = rig.rollback.status(R)
    assert status["guards"]["quality"]["judged"] == "ok" and status["recovered_ms"] > t + 33_000
    assert len(rig.commands()) == 1  # recovery is reported, nothing acts on it


async def test_escalation_preset_arms_on_the_second_breach_and_an_operator_clears_it(rig: Rig) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    api = asyncio.create_task(serve_api(rig.nc, stop, ready))
    await ready.wait()
    try:
        await rig.publish([policy_change(R, {"preset": "escalation"}), *runs(R, 60, candidate=BAD)])
        [kill] = rig.commands(KillSwitch)
        assert rig.commands(Escalation) == []  # the first breach: the kill handles it
        await rig.publish([resume(R, kill.after, 5.0, time_ms=kill.time_ms + 1_000),
                           *runs(R, 700, canary_pct=5.0, candidate=BAD, t0=kill.time_ms + 1_001)])
        [armed] = rig.commands(Escalation)
        assert armed.state == "armed" and armed.count == 2 and len(rig.commands(KillSwitch)) == 2
        deadline = time.monotonic() + 15
        while True:  # the API reads the armed flags from the consumer's KV status
            try:
                reply = await call(rig.nc, "clear_escalation", {"rollout": R, "actor": "alice",
                                                                "reason": "root cause fixed upstream"})
                break
            except ApiError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert [c["trigger"] for c in reply["cleared"]] == ["quality"]
        await rig.settle()
        assert rig.rollback.status(R)["escalations"] == []
        by_hand = [e for e in rig.received if isinstance(e, Escalation) and e.actor == "alice"]
        assert by_hand[0].state == "expired" and by_hand[0].reason == "cleared by hand: root cause fixed upstream"
        with pytest.raises(ApiError) as refused:
            await call(rig.nc, "clear_escalation", {"rollout": R, "actor": "alice", "reason": "again",
                                                    "trigger": "latency"})
        assert refused.value.code == 409
    finally:
        stop.set()
        await api
