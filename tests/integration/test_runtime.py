"""The consumer runtime against a real nats-server: fold, commit, resume, relay, publish."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.consumer import Consumer, stored_digest
from rollout_engine.consumers.control_consumer import build as build_control
from rollout_engine.consumers.folding import fold_events
from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.consumers.stats_consumer import build as build_stats
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Decision,
    Event,
    KillSwitch,
    LogMessage,
    Metric,
    Outcome,
    decode,
    encode,
    encode_batch,
    new_event_id,
    subjects,
)
from rollout_engine.events.message import log_messages

T0 = 1_700_000_000_000


def _settings(server: EmbeddedServer, tmp_path: Path, **extra: object) -> Settings:
    return load_settings(env={}, nats_url=server.url, data_dir=str(tmp_path / "data"), **extra)


def workload(n: int, rollout: str = "r1") -> list[list[Event]]:
    """Batches of ten events of one kind, as the SDK publishes them."""
    batches: list[list[Event]] = []
    for b in range(n // 10):
        t = T0 + b * 100
        batch: list[Event] = []
        for i in range(10):
            variant = "candidate" if (b + i) % 3 == 0 else "baseline"
            common = {"id": new_event_id(t), "rollout": rollout, "time_ms": t + i, "producer": "test"}
            if b % 3 == 0:
                batch.append(Decision(unit=f"u{i}", variant=variant, reason="canary", canary_pct=30.0,
                                      config_version=1, propensity=0.3, **common))
            elif b % 3 == 1:
                batch.append(Outcome(decision_id="d", variant=variant, verdict="win" if i % 4 else "loss",
                                     quality=80.0 + i, **common))
            else:
                batch.append(Metric(variant=variant, name="latency_ms", value=100.0 + b + i, **common))
        batches.append(batch)
    return batches


async def publish(js: object, batches: list[list[Event]]) -> None:
    for batch in batches:
        kind = {"Decision": "decision", "Outcome": "outcome", "Metric": "metric"}[type(batch[0]).__name__]
        await js.publish_async(subjects.event(batch[0].rollout, kind), encode_batch(batch))  # type: ignore[attr-defined]
    await js.publish_async_completed()  # type: ignore[attr-defined]


@pytest.fixture
async def stack(fresh_server: EmbeddedServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = _settings(fresh_server, tmp_path)
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    yield settings, nc, js
    await nc.close()


async def test_runner_folds_the_log_commits_and_resumes_after_the_committed_sequence(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    batches = workload(300)
    await publish(js, batches[:15])
    first = await consumer_runner(Consumer(CanaryStats()), settings, nc=nc, until_idle=True, batch=4).run()
    assert (first.seq, first.events) == (15, 150)
    await publish(js, batches[15:])
    resumed = consumer_runner(Consumer(CanaryStats()), settings, nc=nc, until_idle=True, batch=7)
    second = await resumed.run()
    assert (second.seq, second.events) == (30, 150)  # only what was new: nothing counted twice
    clean = one_at_a_time(CanaryStats(), batches)
    assert second.digest == clean.digest()
    assert (await stored_digest(Consumer(CanaryStats()), settings)) == (30, clean.digest())
    assert resumed.projection.split("r1", "all") == clean.split("r1", "all")


async def test_a_gap_in_deliveries_is_filled_from_the_stream_in_order(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    batches = workload(50)
    await publish(js, batches)
    runner = consumer_runner(Consumer(CanaryStats()), settings, nc=nc)
    await runner.store.open()
    try:
        raw = [await js.get_msg(subjects.LOG_STREAM, s) for s in range(1, 6)]
        deliveries = [LogMessage(m.seq, m.subject, m.data) for m in raw]
        result = await runner._process([deliveries[0], deliveries[3], deliveries[4], deliveries[0]])
        assert result.seq == 5 and result.messages == 5 and result.skipped == 1
        await runner._landed()  # its commit runs in the lane: let it land before closing the store
    finally:
        await runner.store.close()
    assert runner.projection.digest() == one_at_a_time(CanaryStats(), batches).digest()


def one_at_a_time(projection: CanaryStats, batches: list[list[Event]]) -> CanaryStats:
    """Every event applied in log order, one at a time, with the stream sequence of the
    message that carried it (the series keep it per sample, for a kill's evidence): what
    any batching of fetches must equal."""
    for seq, batch in enumerate(batches, 1):
        for event in batch:
            projection.apply(event, seq)
    return projection


class Echo(RolloutProjection[list[str]]):
    """A projection that emits one kill switch per test kill switch it sees (tests the outbox)."""

    name = "echo"

    def apply(self, event: Event, seq: int) -> list[Event]:
        if isinstance(event, KillSwitch) and event.actor == "test":
            self.rollouts.setdefault(event.rollout, []).append(event.id)
            self.touch(event.rollout)
            return [KillSwitch(id=f"echo-{event.id}", rollout=event.rollout, time_ms=event.time_ms, producer="echo",
                               actor="echo", reason="echo", before=event.after, after=event.after)]
        return []

    def encode_rollout(self, rollout: str) -> bytes:
        return msgspec.msgpack.encode(self.rollouts[rollout])

    def decode_rollout(self, rollout: str, blob: bytes) -> list[str]:
        return msgspec.msgpack.decode(blob, type=list[str])


def kill(rollout: str, n: int) -> KillSwitch:
    before, after = ControlState(canary_pct=20.0), ControlState(canary_pct=0.0, kill_switch=True, config_version=n)
    return KillSwitch(id=f"k{n}", rollout=rollout, time_ms=T0 + n, producer="test", actor="test", reason="test",
                      before=before, after=after)


async def test_emitted_events_are_committed_then_published_once_with_their_ids(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    for n in range(3):
        await js.publish(subjects.control("r1", "kill_switch"), encode(kill("r1", n)))
    await consumer_runner(Consumer(Echo()), settings, nc=nc, until_idle=True).run()
    # a second process re-folding from scratch emits the same ids: JetStream keeps one copy
    (Path(settings.data_dir) / "consumers" / "echo.sqlite").unlink()
    await consumer_runner(Consumer(Echo()), settings, nc=nc, until_idle=True).run()
    info = await js.stream_info(subjects.LOG_STREAM)
    assert info.state.messages == 6
    echoed = [decode((await js.get_msg(subjects.LOG_STREAM, s)).data) for s in range(4, 7)]
    assert [e.id for e in echoed] == ["echo-k0", "echo-k1", "echo-k2"]


async def test_control_consumer_puts_each_rollouts_state_in_kv(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    change = ConfigChange(id="c1", rollout="r2", time_ms=T0, producer="test", actor="op", reason="ramp",
                          before=ControlState(), after=ControlState(canary_pct=25.0, config_version=1))
    await js.publish(subjects.control("r2", "config"), encode(change))
    await js.publish(subjects.control("r1", "kill_switch"), encode(kill("r1", 7)))
    summary = await consumer_runner(build_control(settings), settings, nc=nc, until_idle=True).run()
    kv = await js.key_value(subjects.STATE_BUCKET)
    r1 = msgspec.msgpack.decode((await kv.get("control.r1")).value, type=ControlState)
    r2 = msgspec.msgpack.decode((await kv.get("control.r2")).value, type=ControlState)
    assert r1.kill_switch and r1.canary_pct == 0.0
    assert r2.canary_pct == 25.0 and not r2.kill_switch
    again = await consumer_runner(build_control(settings), settings, nc=nc, until_idle=True).run()
    assert again.digest == summary.digest and again.events == 0


async def test_canary_stats_consumer_publishes_summaries_to_kv(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    await publish(js, workload(60, rollout="shop"))
    live = await nc.subscribe(subjects.stats("shop"))
    await consumer_runner(build_stats(settings), settings, nc=nc, until_idle=True).run()
    pushed = msgspec.json.decode((await live.next_msg(timeout=2)).data)
    kv = await js.key_value(subjects.STATE_BUCKET)
    published = msgspec.json.decode((await kv.get("stats.shop")).value)
    assert pushed == published
    assert published["rollout"] == "shop"
    assert set(published["windows"]) == {"last_n", "time", "all"}
    assert published["windows"]["all"]["candidate"]["decisions"] + published["windows"]["all"]["baseline"]["decisions"] == 20


async def test_a_second_process_of_the_same_consumer_is_refused(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import os
    import subprocess
    import sys

    settings, nc, _ = stack
    first = consumer_runner(Consumer(CanaryStats()), settings, nc=nc)
    task = asyncio.create_task(first.run())
    while first.store._db is None:
        await asyncio.sleep(0.01)
    second = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir", settings.data_dir,
         "consumer", "canary_stats", "--until-idle"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    first.stop()
    await task
    assert second.returncode == 2, (second.returncode, second.stdout, second.stderr)
    assert "already running" in second.stderr and str(os.getpid()) in second.stderr, second.stderr


async def test_a_store_from_another_version_is_refused_with_what_to_do(stack) -> None:  # type: ignore[no-untyped-def]
    from rollout_engine.consumers.consumer import StoreIncompatible
    from rollout_engine.consumers.store import SQLiteConsumerStore

    settings, nc, _ = stack
    async with SQLiteConsumerStore.for_consumer(settings.data_dir, "canary_stats") as store:
        await store.commit(3, {"": b"\x93not a canary-stats part"})
    with pytest.raises(StoreIncompatible, match="Delete that file"):
        await consumer_runner(Consumer(CanaryStats()), settings, nc=nc, until_idle=True).run()
    with pytest.raises(StoreIncompatible, match="Delete that file"):
        await stored_digest(Consumer(CanaryStats()), settings)


async def test_the_live_runner_and_a_replay_of_its_log_run_the_same_fold(stack) -> None:  # type: ignore[no-untyped-def]
    """Replay proves the live fold only if both run the same code: each ``apply`` of the
    live runner and of ``rollout replay --stream``'s fold records who called it."""
    import sys

    from rollout_engine.engine.logtools.reader import read_messages
    from rollout_engine.engine.logtools.replay import replay_messages

    callers: dict[str, set[object]] = {"live": set(), "replay": set()}

    class Spy(RollbackProjection):
        path = "live"

        def apply(self, event, seq):  # type: ignore[no-untyped-def]
            callers[self.path].add(sys._getframe(1).f_code)
            return super().apply(event, seq)

    settings, nc, js = stack
    events = runs("spy", 60, canary_pct=50.0, candidate=Profile(quality=80.0))  # regresses: a kill is emitted
    for subject, payload in log_messages(events, 50):
        await js.publish(subject, payload)
    live = await consumer_runner(Consumer(Spy()), settings, nc=nc, until_idle=True, fetch_timeout=0.2).run()
    replayed = Spy()
    replayed.path = "replay"
    messages = [m async for m in read_messages(js)]
    result = replay_messages([m for m in messages if m.seq <= live.seq], [replayed])
    assert callers["live"] == callers["replay"] == {fold_events.__code__}
    assert result.digests["rollback"] == live.digest and result.emitted["rollback"] >= 1
