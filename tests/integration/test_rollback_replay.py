"""A recorded incident, replayed from its log, gives the identical command sequence.

The incident runs through a real nats-server with the rollback consumer on the
runtime: a live policy and a stricter dry-run policy, a gradual quality regression, a
kill, two manual re-enables that are killed again, an escalation armed by the third
kill and expired by a tick four hours later. Then:

1. the recorded log (every message, with its stream sequence) is folded by a fresh
   projection exactly as the runtime folds it: it emits the same bytes the consumer
   published;
2. the incident's inputs are published again into a second, empty server with a
   fresh consumer: the command sequence in its log is byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from rollout_engine.consumers.folding import Folder
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, resume, runs
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import (
    ControlState,
    Escalation,
    Event,
    KillSwitch,
    LogMessage,
    WouldKill,
    encode,
    subjects,
)
from tests.integration.test_canary_sim import Rig, make_rig

R = "checkout"
HOUR = 3_600_000


async def _incident(rig: Rig) -> list[list[Event]]:
    """Drive the incident; return the input phases exactly as published."""
    phases: list[list[Event]] = []

    async def phase(events: list[Event]) -> None:
        phases.append(events)
        await rig.publish(events)

    live = policy_change(R, {"name": "checkout"}, canary_pct=50.0)
    shadow = policy_change(R, {"name": "strict", "dry_run": True, "thresholds": {"max_quality_drop": 2.0}},
                           before=live.after)
    degrading: list[Event] = [live, shadow]
    for step, quality in enumerate((95.0, 93.0, 91.0, 89.0, 87.0)):
        degrading += runs(R, 200, canary_pct=50.0, candidate=Profile(quality=quality), start=200 * step)
        degrading.append(make_tick(T0 + 2_000 * (step + 1), 250))
    await phase(degrading)
    t = T0 + 20_000
    for _ in range(2):  # re-enabled at 5% twice, still regressing: killed again each time
        kill: KillSwitch = rig.commands(KillSwitch)[-1]
        await phase([resume(R, kill.after, 5.0, time_ms=t),
                     *runs(R, 700, canary_pct=5.0, candidate=Profile(quality=85.0), t0=t + 1)])
        t += 60_000
    armed = [e for e in rig.commands(Escalation) if e.state == "armed"]
    await phase([make_tick(armed[0].expires_ms + 250 - armed[0].expires_ms % 250, 250)])
    return phases


async def _recorded(rig: Rig) -> tuple[list[LogMessage], list[Event]]:
    info = await rig.js.stream_info(subjects.LOG_STREAM)
    deliveries = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await rig.js.get_msg(subjects.LOG_STREAM, seq)
        deliveries.append(LogMessage(seq, msg.subject, msg.data))
    commands = [e for e in await rig.log_commands() if e.producer == "rollback"]
    return deliveries, commands


async def test_recorded_incident_replays_to_the_identical_command_sequence(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with make_rig(fresh_server, tmp_path / "a", consumers=("rollback",)) as rig:
        inputs = await _incident(rig)
        deliveries, recorded = await _recorded(rig)
        seen_by_service = list(rig.commands())

    kinds = [type(e).__name__ + (f":{e.state}" if isinstance(e, Escalation) else "") for e in recorded]
    assert kinds == ["WouldKill", "KillSwitch",  # the stricter dry-run policy would have killed first
                     "KillSwitch", "WouldKill",  # re-enabled, killed again (the shadow agrees)
                     "KillSwitch", "Escalation:armed", "WouldKill",  # third kill of quality in 24 h
                     "Escalation:expired"]  # four hours later, by a tick
    would, first_kill = recorded[0], recorded[1]
    assert isinstance(would, WouldKill) and would.policy_name == "strict" and would.time_ms < first_kill.time_ms
    assert [encode(e) for e in seen_by_service] == [encode(e) for e in recorded]  # a service got each, on time

    # 1. fold the recorded log as the runtime does
    rows = Folder.outbox_of(Folder(RollbackProjection()).fold_batch(deliveries))
    assert [row.data for row in rows] == [encode(e) for e in recorded]
    assert [row.subject for row in rows][:2] == [subjects.control(R, "would_kill"), subjects.control(R, "kill_switch")]

    # 2. publish the same inputs into an empty server: the same commands, byte for byte
    second = EmbeddedServer(tmp_path / "nats-2", port=0)
    second.start()
    try:
        async with make_rig(second, tmp_path / "b", consumers=("rollback",)) as again:
            for events in inputs:
                await again.publish(events)
            _, replayed = await _recorded(again)
    finally:
        second.stop()
    assert [encode(e) for e in replayed] == [encode(e) for e in recorded]


async def test_kill_command_ids_deduplicate_when_the_consumer_reprocesses(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A consumer whose store is lost refolds the log and re-emits: JetStream drops the repeats."""
    async with make_rig(fresh_server, tmp_path / "a", consumers=("rollback",)) as rig:
        await rig.publish(runs(R, 200, canary_pct=50.0, candidate=Profile(latency_ms=2_000.0)))
        await rig.stop("rollback")
        for path in Path(rig.settings.data_dir).rglob("*rollback*"):
            path.unlink()
        await rig.start("rollback")
        await rig.settle()
        kills = [e for e in await rig.log_commands() if isinstance(e, KillSwitch)]
        assert len(kills) == 1
        assert rig.rollback.status(R)["kill_switch"] is True
        assert kills[0].before == ControlState()
