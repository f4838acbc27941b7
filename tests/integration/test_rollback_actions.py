"""Rollback actions end to end: dry-run, SRM, statistical guards, progression, escalation.

Each test drives its own server with the rollback and control consumers on the runtime
and checks what a subscribed service receives and what the KV state says.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, runs
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import (
    ConfigChange,
    Decision,
    Escalation,
    Event,
    KillSwitch,
    Metric,
    WouldKill,
    subjects,
)
from tests.integration.test_canary_sim import Rig, make_rig

R = "search"


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data") as r:
        yield r


async def test_dry_run_policy_records_would_kill_without_touching_control_state(rig: Rig) -> None:
    strict = {"name": "strict", "dry_run": True, "thresholds": {"max_latency_p95_ms": 1000}}
    start = policy_change(R, None, canary_pct=20.0)
    await rig.publish([start, policy_change(R, strict, before=start.after),
                       *runs(R, 500, canary_pct=20.0, candidate=Profile(latency_ms=1200.0))])
    [would] = rig.commands()
    assert isinstance(would, WouldKill)
    assert would.reason == "latency (candidate p95: 1200ms > 1000ms); insufficient: cost 29/30 [dry-run policy strict v1]"
    assert would.after.kill_switch and would.before.canary_pct == 20.0
    state = await rig.kv_control(R)
    assert state.canary_pct == 20.0 and not state.kill_switch  # nothing obeyed it
    assert rig.rollback.status(R)["would_kills"] == 1 and rig.rollback.status(R)["kills"] == 0


async def test_sample_ratio_mismatch_is_its_own_breach(rig: Rig) -> None:
    rng = random.Random(5)
    decisions: list[Event] = []
    for i in range(600):  # configured 10%, observed ~25%
        candidate = rng.random() < 0.25
        decisions.append(Decision(id=f"d-{i}", rollout=R, time_ms=T0 + i, producer="sim", unit=f"u{i}",
                                  variant="candidate" if candidate else "baseline",
                                  reason="canary" if candidate else "default", canary_pct=10.0,
                                  config_version=1, propensity=0.1))
    await rig.publish(decisions)
    [kill] = rig.commands(KillSwitch)
    [srm] = kill.breaches
    assert srm.type == "srm" and srm.threshold == 10.0 and srm.observed > 20.0
    assert srm.p_value is not None and srm.p_value < 0.001
    assert 200 <= srm.candidate_n + srm.baseline_n <= 400  # confirmed sequentially within a few hundred


def _errors(rate_b: float, rate_c: float, n: int, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n):
        for variant, rate in (("baseline", rate_b), ("candidate", rate_c)):
            out.append(Metric(id=f"m-{variant}-{i}", rollout=R, time_ms=T0 + 10 * i, producer="sim",
                              variant=variant, name="error", value=float(rng.random() < rate)))
    return out


ERRORS = {"name": "errors", "metric": "error", "aggregate": "rate", "mode": "increase", "threshold": 0.05,
          "test": "sequential", "alpha": 0.05}


async def test_sequential_guard_kills_a_significant_error_increase(rig: Rig) -> None:
    await rig.publish([policy_change(R, {"last_n": 500, "guards": [ERRORS]}), *_errors(0.01, 0.20, 500)])
    [kill] = rig.commands(KillSwitch)
    [errors] = [b for b in kill.breaches if b.guard == "errors"]
    assert errors.type == "sequential" and errors.p_value is not None and errors.p_value < 0.05
    assert "errors (baseline rate: " in kill.reason and "sequential p=" in kill.reason


async def test_sequential_guard_waits_out_noise(rig: Rig) -> None:
    # 7% vs 1% over 60 samples crosses the 5-point gate but is not significant yet: inconclusive
    await rig.publish([policy_change(R, {"last_n": 60, "guards": [ERRORS]}), *_errors(0.01, 0.07, 60, seed=9)])
    assert rig.commands(KillSwitch) == []


SHIFT = {"name": "shift", "metric": "latency_ms", "aggregate": "p50", "mode": "ratio", "threshold": 1.5,
         "test": "mann_whitney", "min_effect": 0.5}


def _latency(candidate: list[float], baseline: list[float]) -> list[Event]:
    out: list[Event] = []
    for i, (c, b) in enumerate(zip(candidate, baseline, strict=True)):
        for variant, value in (("candidate", c), ("baseline", b)):
            out.append(Metric(id=f"l-{variant}-{i}", rollout=R, time_ms=T0 + 10 * i, producer="sim",
                              variant=variant, name="latency_ms", value=value))
    return out


async def test_mann_whitney_guard_with_effect_size_gate(rig: Rig) -> None:
    rng = random.Random(11)
    base = [rng.uniform(100, 200) for _ in range(60)]
    # Kayenta #780's shape: 7 in 10 samples a hundred times slower
    slow = [v * 100 if i % 10 < 7 else v for i, v in enumerate(rng.uniform(100, 200) for _ in range(60))]
    # the rank test is valid at every look; a boundary tuned for ~100 samples (not the
    # default 5,000) lets 30 + 30 of them be conclusive
    policy = {"thresholds": {"max_latency_p95_ms": -1}, "guards": [SHIFT], "sequential_n": 100}
    await rig.publish([policy_change(R, policy), *_latency(slow, base)])
    [kill] = rig.commands(KillSwitch)
    [shift] = kill.breaches
    assert shift.type == "mann_whitney" and shift.p_value is not None and shift.p_value < 0.05
    assert shift.observed > 1.5 and "mann_whitney p=" in shift.detail


async def test_progression_moves_the_canary_up_and_the_kv_follows(rig: Rig) -> None:
    policy = {"progression": {"enabled": True, "steps": [5, 10, 20], "interval_ms": 1_000,
                              "healthy_intervals": 2, "min_samples": 10}}
    await rig.publish([policy_change(R, policy, canary_pct=5.0), *runs(R, 1_000, canary_pct=5.0)])
    moves = rig.commands(ConfigChange)
    # 5 candidate samples a second: an interval needs 2 s to collect 10, a step 2 intervals
    assert [m.after.canary_pct for m in moves] == [10.0, 20.0]
    assert moves[0].reason.startswith("progression: canary 5 -> 10%")
    # 2 intervals of 1 s would take 2 s; too few samples extended each to ~2 s
    assert moves[0].time_ms - T0 > 3_000 and moves[1].time_ms - moves[0].time_ms > 3_000
    assert (await rig.kv_control(R)).canary_pct == 20.0


async def test_inconclusive_limit_escalates(rig: Rig) -> None:
    policy = {"hysteresis": {"inconclusive_limit": 5, "check_interval_ms": 1_000}, "srm": {"enabled": False}}
    await rig.publish([policy_change(R, policy), *runs(R, 20, canary_pct=50.0),
                       *(make_tick(T0 + 1_000 * i, 250) for i in range(1, 8))])
    flags = rig.commands(Escalation)
    assert sorted(f.trigger for f in flags) == ["inconclusive-cost", "inconclusive-latency", "inconclusive-quality"]
    assert all(f.state == "armed" and "inconclusive for 5 consecutive checks" in f.reason for f in flags)
    received = {e.id for e in rig.received}
    assert all(f.id in received for f in flags)
    assert subjects.control(R, "escalation").endswith(".escalation")


async def test_rollout_status_is_published_to_kv_for_operators(rig: Rig) -> None:
    import asyncio
    import json

    await rig.publish(runs(R, 200, canary_pct=50.0, candidate=Profile(cost_cents=5.0)))
    kv = await rig.js.key_value(subjects.STATE_BUCKET)
    status = None
    for _ in range(100):  # published at most once a second, beside the fold
        try:
            status = json.loads((await kv.get(f"rollback.{R}")).value)
        except Exception:
            status = None
        if status and status["kill_switch"]:
            break
        await asyncio.sleep(0.05)
    assert status is not None and status["kill_switch"] is True and status["kills"] == 1
    assert status["guards"]["cost"]["state"] == "alarm" and status["policy"] == {"name": "default", "version": 0}
