"""23 simulated-canary cases (healthy, regressed, borderline, recovered...), end to end through a real nats-server.

Each test gets its own server (``fresh_server``) and runs the engine's own consumers
with the shared runtime: ``rollback`` (the unit under test) and ``control`` (so the KV
state follows). Synthetic runs (``consumers.rollback.scenario``) are published to the
log exactly as producers would; a core subscription on ``ro.ctl.>`` plays the service
that receives the kill switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.consumers import control_consumer
from rollout_engine.consumers.rollback import consumer as rollback_consumer
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, resume, runs
from rollout_engine.consumers.runtime import Runner
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import (
    ControlState,
    Event,
    KillSwitch,
    Resume,
    command_id,
    decode,
    encode,
    subjects,
)

R = "planner"


@dataclass
class Rig:
    """A private engine: server, rollback + control consumers, and a listening service."""

    settings: Settings
    nc: Any
    js: Any
    runners: dict[str, Runner] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    received: list[Event] = field(default_factory=list)

    async def start(self, name: str) -> None:
        module = {"rollback": rollback_consumer, "control": control_consumer}[name]
        runner = consumer_runner(module.build(self.settings), self.settings, nc=await connect(self.settings, name=name),
                        fetch_timeout=0.05)
        self.runners[name] = runner
        self.tasks[name] = asyncio.create_task(runner.run())

    async def stop(self, name: str) -> None:
        runner = self.runners.pop(name)
        runner.stop()
        await asyncio.wait_for(self.tasks.pop(name), 10)
        await runner.nc.close()

    @property
    def rollback(self) -> RollbackProjection:
        return self.runners["rollback"].projection  # type: ignore[return-value]

    async def publish(self, events: Iterable[Event]) -> None:
        """Publish in order, one event per message with its id as Nats-Msg-Id."""
        for event in events:
            await self.js.publish_async(subjects.for_event(event), encode(event), headers={"Nats-Msg-Id": event.id})
        await self.js.publish_async_completed()
        await self.settle()

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every consumer has folded the whole log, including what it emitted."""
        deadline = time.monotonic() + timeout
        stable = 0
        while stable < 2:
            last = (await self.js.stream_info(subjects.LOG_STREAM)).state.last_seq
            if all(r.folder.seq >= last for r in self.runners.values()):
                stable += 1
            else:
                stable = 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers stuck below seq {last}: {[r.folder.seq for r in self.runners.values()]}")
            await asyncio.sleep(0.02)

    def commands(self, kind: type[Event] | None = None) -> list[Any]:
        """What the rollback consumer emitted (the service saw it), optionally of one kind."""
        return [e for e in self.received if e.producer == "rollback" and (kind is None or isinstance(e, kind))]

    async def log_commands(self) -> list[Event]:
        """Every control command in the log, in log order (read back from the stream)."""
        out: list[Event] = []
        info = await self.js.stream_info(subjects.LOG_STREAM)
        for seq in range(1, info.state.last_seq + 1):
            msg = await self.js.get_msg(subjects.LOG_STREAM, seq)
            if msg.subject.startswith(f"{subjects.ROOT}.ctl."):
                out.append(decode(msg.data))
        return out

    async def kv_control(self, rollout: str) -> ControlState:
        kv = await self.js.key_value(subjects.STATE_BUCKET)
        entry = await kv.get(subjects.kv_key("control", rollout))
        return msgspec.msgpack.decode(entry.value, type=ControlState)


@contextlib.asynccontextmanager
async def make_rig(server: EmbeddedServer, data_dir: Path, consumers: tuple[str, ...] = ("rollback", "control")
                   ) -> AsyncIterator[Rig]:
    settings = load_settings(env={}, nats_url=server.url, data_dir=str(data_dir), consumer_batch=64)
    nc = await connect(settings, name="sim")
    js = nc.jetstream()
    await provision(js, settings)
    rig = Rig(settings, nc, js)

    async def service(msg: Any) -> None:
        rig.received.append(decode(msg.data))

    sub = await nc.subscribe(f"{subjects.ROOT}.ctl.>", cb=service)
    for name in consumers:
        await rig.start(name)
    try:
        yield rig
    finally:
        for name in list(rig.runners):
            await rig.stop(name)
        await sub.unsubscribe()
        await nc.close()


@pytest.fixture
async def rig(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(fresh_server, tmp_path / "data") as r:
        yield r


HEALTHY = Profile()
REGRESSED_QUALITY = Profile(quality=85.0)


# --- 1. healthy (3) ----------------------------------------------------------------------
async def test_healthy_canary_is_not_rolled_back(rig: Rig) -> None:
    await rig.publish(runs(R, 400, canary_pct=20))
    assert rig.commands() == []
    assert rig.rollback.status(R)["kills"] == 0


async def test_candidate_outperforming_baseline_is_not_rolled_back(rig: Rig) -> None:
    better = Profile(quality=99.0, latency_ms=400.0, cost_cents=1.0)
    await rig.publish(runs(R, 400, canary_pct=20, candidate=better))
    assert rig.commands() == []


async def test_exactly_at_every_threshold_is_not_rolled_back(rig: Rig) -> None:
    at = Profile(quality=90.0, latency_ms=1600.0, cost_cents=3.0)  # drop 5.0, p95 1600, cost 3.0
    await rig.publish(runs(R, 400, canary_pct=50, candidate=at))
    assert rig.commands() == []


# --- 2. regressions (7) --------------------------------------------------------------------
async def test_quality_regression_triggers_rollback(rig: Rig) -> None:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=REGRESSED_QUALITY))
    [kill] = rig.commands(KillSwitch)
    assert kill.after.kill_switch is True and kill.after.canary_pct == 0.0
    assert kill.reason.startswith("quality (baseline: 95.0, candidate: 85.0, drop: 10.0)")
    assert (await rig.kv_control(R)).kill_switch is True  # the KV state follows


async def test_latency_regression_triggers_rollback(rig: Rig) -> None:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=Profile(latency_ms=1700.0)))
    [kill] = rig.commands(KillSwitch)
    assert kill.reason.startswith("latency (candidate p95: 1700ms > 1600ms)")


async def test_cost_regression_triggers_rollback(rig: Rig) -> None:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=Profile(cost_cents=4.0)))
    [kill] = rig.commands(KillSwitch)
    assert kill.reason.startswith("cost (candidate: 4.0¢ > 3.0¢)")


async def test_multiple_simultaneous_regressions_are_all_reported(rig: Rig) -> None:
    worst = Profile(quality=82.0, latency_ms=1850.0, cost_cents=4.0)
    await rig.publish([policy_change(R, {"hysteresis": {"sustain_ms": 200}}), *runs(R, 200, candidate=worst)])
    [kill] = rig.commands(KillSwitch)
    assert [b.guard for b in kill.breaches] == ["quality", "latency", "cost"]
    assert kill.reason == ("quality (baseline: 95.0, candidate: 82.0, drop: 13.0); "
                           "latency (candidate p95: 1850ms > 1600ms); cost (candidate: 4.0¢ > 3.0¢) [policy default v1]")


async def test_gradual_degradation_rolls_back_only_once_the_drop_exceeds_the_threshold(rig: Rig) -> None:
    events: list[Event] = []
    for step, quality in enumerate((95.0, 93.0, 91.0, 89.0, 87.0, 85.0)):  # 1 point worse per 100 runs
        events += runs(R, 200, canary_pct=50, candidate=Profile(quality=quality), start=200 * step)
    await rig.publish(events)
    [kill] = rig.commands(KillSwitch)
    quality = kill.breaches[0]
    assert quality.guard == "quality" and 5.0 < quality.observed < 6.5  # caught as soon as it crossed
    assert quality.candidate_n == 100  # over the last 100 candidate runs


async def test_insufficient_samples_skip_evaluation(rig: Rig) -> None:
    terrible = Profile(quality=10.0, latency_ms=9000.0, cost_cents=50.0)
    await rig.publish(runs(R, 58, canary_pct=50, candidate=terrible))  # 29 candidate runs
    assert rig.commands() == []
    guards = rig.rollback.status(R)["guards"]
    assert {name: g["inconclusive"] > 0 for name, g in guards.items() if name != "srm"} == {
        "quality": True, "latency": True, "cost": True}


async def test_rollback_audit_metadata(rig: Rig) -> None:
    await rig.publish([policy_change(R, None, canary_pct=50.0)])
    await rig.publish(runs(R, 200, canary_pct=50, candidate=Profile(cost_cents=3.5)))
    [kill] = rig.commands(KillSwitch)
    assert kill.actor == "rollback" and kill.producer == "rollback"
    assert kill.before.canary_pct == 50.0 and not kill.before.kill_switch
    # the one kill transition: the same after-state an operator's kill gives (config_version + 1)
    assert kill.after == msgspec.structs.replace(kill.before, canary_pct=0.0, kill_switch=True,
                                                 config_version=kill.before.config_version + 1)
    [breach] = kill.breaches
    assert (breach.guard, breach.type, breach.observed, breach.threshold, breach.window) == (
        "cost", "threshold", 3.5, 3.0, "last_n")
    assert breach.candidate_n == 30
    assert kill.id == command_id("kill", R, kill.cause_id)
    log = await rig.log_commands()
    assert [type(e).__name__ for e in log] == ["ConfigChange", "KillSwitch"] and log[1] == kill


# --- 3. traffic splits (3) -----------------------------------------------------------------
@pytest.mark.parametrize("pct", [5.0, 50.0, 95.0])
async def test_regression_is_caught_at_every_split(rig: Rig, pct: float) -> None:
    await rig.publish([policy_change(R, None, canary_pct=pct)])
    await rig.publish(runs(R, 1_000, canary_pct=pct, candidate=REGRESSED_QUALITY))
    [kill] = rig.commands(KillSwitch)
    assert kill.before.canary_pct == pct and kill.breaches[0].guard == "quality"
    assert kill.breaches[0].candidate_n >= 30 and kill.breaches[0].baseline_n >= 10


# --- 4. recovery (2) -------------------------------------------------------------------------
async def _killed(rig: Rig) -> KillSwitch:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=REGRESSED_QUALITY))
    [kill] = rig.commands(KillSwitch)
    return kill


async def test_manual_reenable_after_rollback(rig: Rig) -> None:
    kill = await _killed(rig)
    await rig.publish([resume(R, kill.after, 5.0, time_ms=T0 + 10_000)])
    state = await rig.kv_control(R)
    assert state.canary_pct == 5.0 and not state.kill_switch
    assert rig.rollback.status(R)["epoch"] == 1


async def test_healthy_metrics_after_reenable_do_not_retrigger(rig: Rig) -> None:
    kill = await _killed(rig)
    t = T0 + 10_000
    await rig.publish([resume(R, kill.after, 5.0, time_ms=t), *runs(R, 2_000, canary_pct=5.0, t0=t + 1),
                       *(make_tick(t + 250 * i, 250) for i in range(1, 200, 10))])
    assert len(rig.commands(KillSwitch)) == 1
    assert not (await rig.kv_control(R)).kill_switch


# --- 5. edge cases (8) -----------------------------------------------------------------------
async def test_zero_samples_for_both_versions(rig: Rig) -> None:
    await rig.publish([policy_change(R, None, canary_pct=10.0), *(make_tick(T0 + 250 * i, 250) for i in range(20))])
    assert rig.commands(KillSwitch) == []
    status = rig.rollback.status(R)
    assert status["kills"] == 0 and all(g["state"] == "ok" for g in status["guards"].values())


async def test_just_over_a_threshold_is_a_breach(rig: Rig) -> None:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=Profile(quality=89.9)))  # drop 5.1
    [kill] = rig.commands(KillSwitch)
    assert kill.breaches[0].observed == pytest.approx(5.1)


async def test_single_breach_reports_one_guard(rig: Rig) -> None:
    await rig.publish(runs(R, 200, canary_pct=50, candidate=Profile(latency_ms=2000.0)))
    [kill] = rig.commands(KillSwitch)
    assert [b.guard for b in kill.breaches] == ["latency"]


async def test_rollback_reason_formatting(rig: Rig) -> None:
    policy = {"name": "planner", "hysteresis": {"sustain_ms": 200}}
    both = Profile(quality=82.0, latency_ms=1850.0)
    await rig.publish([policy_change(R, policy), *runs(R, 200, canary_pct=50, candidate=both)])
    [kill] = rig.commands(KillSwitch)
    assert kill.reason == ("quality (baseline: 95.0, candidate: 82.0, drop: 13.0); "
                           "latency (candidate p95: 1850ms > 1600ms) [policy planner v1]")
    assert [b.detail for b in kill.breaches] == ["quality (baseline: 95.0, candidate: 82.0, drop: 13.0)",
                                                 "latency (candidate p95: 1850ms > 1600ms)"]


async def test_update_history_chains_before_and_after(rig: Rig) -> None:
    kill = await _killed(rig)
    await rig.publish([resume(R, kill.after, 5.0, time_ms=T0 + 10_000)])
    history = await rig.log_commands()
    assert [type(e) for e in history] == [KillSwitch, Resume]
    assert history[1].before == history[0].after  # every change says what it changed from


async def test_state_persists_across_a_consumer_restart(rig: Rig) -> None:
    kill = await _killed(rig)
    await rig.stop("rollback")
    await rig.start("rollback")
    await rig.publish(runs(R, 50, canary_pct=50, candidate=REGRESSED_QUALITY, start=200))
    assert rig.rollback.status(R)["kill_switch"] is True
    assert [e.id for e in await rig.log_commands()] == [kill.id]  # no second kill


async def test_thresholds_come_from_the_policy_in_the_log(rig: Rig) -> None:
    strict = {"thresholds": {"max_latency_p95_ms": 1000}}
    await rig.publish([policy_change(R, strict), *runs(R, 200, canary_pct=50, candidate=Profile(latency_ms=1200.0))])
    [kill] = rig.commands(KillSwitch)
    assert kill.reason.startswith("latency (candidate p95: 1200ms > 1000ms)")
    assert kill.after.policy_version == 1 and kill.breaches[0].threshold == 1000.0


async def test_min_samples_comes_from_the_policy(rig: Rig) -> None:
    await rig.publish([policy_change(R, {"min_samples": 50}),
                       *runs(R, 98, canary_pct=50, candidate=REGRESSED_QUALITY)])  # 49 candidate runs
    assert rig.commands(KillSwitch) == []
    await rig.publish(runs(R, 2, canary_pct=50, candidate=REGRESSED_QUALITY, start=98))
    [kill] = rig.commands(KillSwitch)
    assert kill.breaches[0].candidate_n == 50


__all__ = ["R", "Rig", "make_rig"]
