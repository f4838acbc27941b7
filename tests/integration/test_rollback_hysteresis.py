"""The hysteresis cases end to end: sustain, recovery, hold-down and flap penalty.

Time is event time: the synthetic runs carry it, and engine ticks (published here as
the tick publisher would) move it when no traffic arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, runs
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import ConfigChange, Event, KillSwitch
from tests.integration.test_canary_sim import Rig, make_rig

R = "steering"
SLOW = Profile(latency_ms=1700.0)


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data", consumers=("rollback",)) as r:
        yield r


def moves(rig: Rig) -> list[ConfigChange]:
    """Canary moves the rollback consumer made."""
    return rig.commands(ConfigChange)


def ticks(start: int, end: int, every: int = 250) -> list[Event]:
    return [make_tick(t, every) for t in range(start, end, every)]


FAST = {"last_n": 20, "min_samples": 10}  # a 20-sample window reacts within a few samples


async def test_breach_shorter_than_sustain_does_not_fire(rig: Rig) -> None:
    await rig.publish([policy_change(R, {**FAST, "hysteresis": {"sustain_ms": 2_000}}),
                       *runs(R, 40),  # 20 healthy candidate samples first
                       *runs(R, 100, candidate=SLOW, start=40),  # 1 s of breach
                       *runs(R, 300, start=140)])  # then healthy again
    assert rig.commands() == []
    assert rig.rollback.status(R)["guards"]["latency"]["state"] == "ok"
    await rig.publish(runs(R, 300, candidate=SLOW, start=440))  # 3 s: now it is sustained
    assert len(rig.commands(KillSwitch)) == 1


async def test_breach_sustained_for_sustain_duration_fires_on_a_tick(rig: Rig) -> None:
    bad = runs(R, 100, candidate=SLOW)  # 1 s of traffic, then silence
    await rig.publish([policy_change(R, {"hysteresis": {"sustain_ms": 2_000}}), *bad])
    assert rig.commands() == []
    await rig.publish(ticks(T0 + 1_000, T0 + 4_000))
    [kill] = rig.commands(KillSwitch)
    first_failure = bad[4 * 59].time_ms  # the 30th candidate run (odd runs are the candidate's)
    assert kill.time_ms - first_failure >= 2_000
    assert kill.cause_id is not None and kill.cause_id.startswith("tick-")  # time moved by ticks alone


STAGED = {
    "staged": {"steps": [25, 0]},
    "thresholds": {"max_latency_p95_ms": 1600},
    "guards": [],
    "hysteresis": {"hold_down_ms": 5_000, "recovery_sustain_ms": 2_000},
}
HEALTHY_CANDIDATE = Profile()


async def test_hold_down_spaces_staged_steps(rig: Rig) -> None:
    await rig.publish([policy_change(R, STAGED, canary_pct=50.0), *runs(R, 1_200, candidate=SLOW)])  # 12 s bad
    both = rig.commands()
    assert [type(m) for m in both] == [ConfigChange, KillSwitch]
    assert [m.after.canary_pct for m in both] == [25.0, 0.0]
    assert both[1].time_ms - both[0].time_ms >= 5_000


async def test_recovery_after_hold_down_stops_the_descent(rig: Rig) -> None:
    bad = runs(R, 200, candidate=SLOW)  # alarm and step to 25 on the 30th candidate sample
    good = runs(R, 1_200, candidate=HEALTHY_CANDIDATE, start=200)  # 12 s healthy
    await rig.publish([policy_change(R, STAGED, canary_pct=50.0), *bad, *good])
    [step] = moves(rig)
    assert step.after.canary_pct == 25.0
    assert rig.commands(KillSwitch) == []
    guard = rig.rollback.status(R)["guards"]["latency"]
    assert guard["state"] == "ok"


async def test_recovery_needs_its_own_threshold(rig: Rig) -> None:
    policy = {**STAGED, "thresholds": {"max_latency_p95_ms": -1},
              "guards": [{"name": "p95", "metric": "latency_ms", "aggregate": "p95", "threshold": 1600,
                          "recovery_threshold": 1200, "unit": "ms"}]}
    between = Profile(latency_ms=1400.0)  # below the threshold, above the recovery threshold: hold
    await rig.publish([policy_change(R, policy, canary_pct=50.0), *runs(R, 200, candidate=SLOW),
                       *runs(R, 1_000, candidate=between, start=200)])
    assert rig.rollback.status(R)["guards"]["p95"]["state"] == "alarm"  # not recovered...
    assert rig.commands(KillSwitch) == []  # ...but not failing either, so no further step


async def test_flapping_guard_gets_a_penalty_threshold(rig: Rig) -> None:
    policy = {
        **FAST,
        "staged": {"steps": [40, 30, 20, 10, 0]},
        "thresholds": {"max_latency_p95_ms": -1},
        "guards": [{"name": "p95", "metric": "latency_ms", "aggregate": "p95", "threshold": 1600,
                    "penalty_threshold_add": 500, "unit": "ms"}],
        "hysteresis": {"hold_down_ms": 1_000, "max_toggles": 2, "flap_window_ms": 60_000, "penalty_ms": 60_000},
    }
    phases: list[Event] = [policy_change(R, policy, canary_pct=50.0)]
    start = 0
    for profile, n in ((SLOW, 50), (HEALTHY_CANDIDATE, 200), (SLOW, 50), (HEALTHY_CANDIDATE, 200), (SLOW, 50)):
        phases += runs(R, n, candidate=profile, start=start)
        start += n
    await rig.publish(phases)
    steps = [c.after.canary_pct for c in moves(rig)]
    # alarm (50->40), recover, alarm (40->30; the third toggle > 2 starts a penalty),
    # recover; then 1700 ms no longer crosses the penalized 2100 ms threshold: no step
    assert steps == [40.0, 30.0]
    assert rig.rollback.status(R)["guards"]["p95"]["penalized"] is True
    await rig.publish(runs(R, 50, candidate=Profile(latency_ms=2_200.0), start=start))  # above 2100 ms
    assert [c.after.canary_pct for c in moves(rig)] == [40.0, 30.0, 20.0]
