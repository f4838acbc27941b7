"""The producer SDK against a real nats-server: control state, assignment, shadow, publishing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy
from prometheus_client import REGISTRY

from rollout_engine.engine.sdk.client import BufferFull, RolloutClient
from rollout_engine.engine.sdk.outbox import Batch
from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Decision,
    EventError,
    KillSwitch,
    Metric,
    Outcome,
    Resume,
    decode_message,
    encode,
    encode_batch,
    new_event_id,
    subjects,
)

REPO = Path(__file__).resolve().parents[2]


async def publish_command(js, rollout: str, command: str, after: ControlState, before: ControlState | None = None):
    """Publish a control command the way the engine does (one event, JetStream-acked)."""
    cls = {"config": ConfigChange, "kill_switch": KillSwitch}[command]
    event = cls(
        id=new_event_id(), rollout=rollout, time_ms=int(time.time() * 1000), producer="test",
        actor="test", reason="test", before=before or ControlState(), after=after,
    )
    await js.publish(subjects.control(rollout, command), encode(event), headers={"Nats-Msg-Id": event.id})
    return event


async def read_events(js, subject_filter: str, timeout: float = 5.0) -> tuple[list, int]:
    """Every event stored under ``subject_filter`` and the number of messages holding them."""
    events: list = []
    messages = 0
    done = asyncio.Event()

    async def on_message(msg) -> None:
        nonlocal messages
        messages += 1
        events.extend(decode_message(msg.data))
        if msg.metadata.num_pending == 0:
            done.set()

    sub = await js.subscribe(subject_filter, stream=subjects.LOG_STREAM, cb=on_message,
                             ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    info = await sub.consumer_info()
    if info.num_pending == 0 and info.delivered.consumer_seq == 0:
        done.set()
    await asyncio.wait_for(done.wait(), timeout)
    await sub.unsubscribe()
    return events, messages


def make_client(settings, tmp_path: Path, **kwargs) -> RolloutClient:
    return RolloutClient(settings, producer="test", outbox_path=tmp_path / "outbox.sqlite", **kwargs)


async def test_state_is_read_before_the_first_call(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    after = ControlState(canary_pct=100, config_version=3, baseline="v1", candidate="v2")
    await publish_command(js, rollout_id, "config", after)
    async with make_client(settings, tmp_path) as client:
        assert client.state(rollout_id) == after
        decision = client.decide(rollout_id, "user-1")
        assert (decision.variant, decision.reason, decision.config_version) == ("v2", "canary", 3)
        assert client.state("never-configured") == ControlState()


async def test_split_stickiness_and_monotonicity_over_100k_units(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    changes: list[ControlState] = []
    units = [f"user-{i}" for i in range(100_000)]
    async with make_client(settings, tmp_path, max_buffered=400_000, on_change=lambda r, s: r == rollout_id and changes.append(s)) as client:
        await publish_command(js, rollout_id, "config", ControlState(canary_pct=10, config_version=1))
        while client.state(rollout_id).config_version != 1:
            await asyncio.sleep(0.005)
        first = [client.assign(rollout_id, u) for u in units]
        again = [client.assign(rollout_id, u) for u in units]
        assert first == again  # sticky
        assert abs(first.count("candidate") / 1000 - 10) < 1.0
        await publish_command(js, rollout_id, "config", ControlState(canary_pct=25, config_version=2))
        while client.state(rollout_id).config_version != 2:
            await asyncio.sleep(0.005)
        raised = [client.assign(rollout_id, u) for u in units]
        assert abs(raised.count("candidate") / 1000 - 25) < 1.0
        assert all(r == "candidate" for f, r in zip(first, raised, strict=True) if f == "candidate")  # monotone
        await client.flush()
    assert [s.canary_pct for s in changes] == [10, 25]


async def test_kill_switch_reaches_assign_within_100ms(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    await publish_command(js, rollout_id, "config", ControlState(canary_pct=100, config_version=1))
    async with make_client(settings, tmp_path) as client:
        assert client.assign(rollout_id, "user-1") == "candidate"
        killed = ControlState(canary_pct=0, kill_switch=True, config_version=2)
        start = time.perf_counter()
        await publish_command(js, rollout_id, "kill_switch", killed)
        while client.assign(rollout_id, "user-1") != "baseline" and time.perf_counter() - start < 2:
            await asyncio.sleep(0.001)
        elapsed_ms = (time.perf_counter() - start) * 1000
        assert client.decide(rollout_id, "user-1").reason == "kill_switch"
    assert elapsed_ms < 100, f"kill switch took {elapsed_ms:.1f} ms to reach assign()"


async def test_bad_input_is_rejected_at_once_with_the_field_named(settings, bus, tmp_path, rollout_id) -> None:
    async with make_client(settings, tmp_path) as client:
        with pytest.raises(EventError, match=r"\$\.verdict"):
            await client.record_outcome(rollout_id, "d1", "baseline", "great")
        with pytest.raises(EventError, match=r"\$\.value.*finite"):
            await client.record_metric(rollout_id, "baseline", "latency_ms", float("nan"))
        with pytest.raises(EventError, match=r"\$\.rollout"):
            await client.record_metric("bad.rollout", "baseline", "latency_ms", 1.0)
        with pytest.raises(EventError, match="rollout"):
            client.assign("checkout v2", "user-1")
        with pytest.raises(EventError, match="unit"):
            client.assign(rollout_id, "")
        outcome = await client.record_outcome(rollout_id, "d1", "baseline", "win", quality=0.9)
        assert outcome.verdict == "win"


async def test_events_arrive_in_batches_exactly_once(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    async with make_client(settings, tmp_path, batch_size=100) as client:
        decisions = [client.decide(rollout_id, f"u{i}") for i in range(1000)]
        for d in decisions[:10]:
            await client.record_outcome(rollout_id, d.id, d.variant, "win", reward=1.0)
            await client.record_metric(rollout_id, d.variant, "latency_ms", 12.5, unit="ms", decision_id=d.id)
    events, messages = await read_events(js, subjects.events_filter(rollout_id))
    kinds = [type(e) for e in events]
    assert kinds.count(Decision) == 1000 and kinds.count(Outcome) == 10 and kinds.count(Metric) == 10
    assert len({e.id for e in events}) == len(events)
    assert messages <= 12  # 10 decision batches + outcomes + metrics
    assert [e.id for e in events if isinstance(e, Decision)] == [d.id for d in decisions]  # in order


async def test_a_retried_batch_is_stored_once(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    async with make_client(settings, tmp_path) as client:
        decision = client.decide(rollout_id, "u1")
        await client.flush()
        # The same batch again, as after a lost ack: through the outbox, same Nats-Msg-Id.
        batch = Batch(f"{decision.id}-1", subjects.event(rollout_id, "decision"), encode_batch([decision]), 1)
        publisher = client._publisher
        assert publisher is not None
        await publisher.outbox.put([batch])
        publisher.kick()
        assert await client.wait_outbox_empty(5)
    events, _ = await read_events(js, subjects.events_filter(rollout_id))
    assert [e.id for e in events] == [decision.id]


async def test_shadow_failure_and_slowness_never_reach_the_caller(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    await publish_command(js, rollout_id, "config", ControlState(canary_pct=0, config_version=1))

    def baseline() -> dict:
        return {"agent": "triage", "steps": [1, 2], "tools": ["mail"], "dry_run": False}

    def failing_candidate() -> dict:
        raise RuntimeError("candidate crashed")

    async def slow_candidate() -> dict:
        await asyncio.sleep(30)
        return {}

    async def different_candidate() -> dict:
        return {"agent": "triage", "steps": [1, 3], "tools": ["mail"], "dry_run": True}

    async with make_client(settings, tmp_path) as client:
        assert await client.shadow(rollout_id, "u1", baseline=baseline, candidate=failing_candidate) == baseline()
        start = time.perf_counter()
        result = await client.shadow(rollout_id, "u2", baseline=baseline, candidate=slow_candidate, timeout=0.05)
        assert result == baseline() and time.perf_counter() - start < 1.0
        await client.shadow(rollout_id, "u3", baseline=baseline, candidate=different_candidate)
    events, _ = await read_events(js, subjects.events_filter(rollout_id))
    by_unit = {e.unit: e for e in events}
    assert by_unit["u1"].shadow.error == "RuntimeError: candidate crashed"
    assert by_unit["u2"].shadow.error == "timeout after 0.05s"
    assert by_unit["u3"].shadow.diff == {"agent": False, "steps": True, "tools": False, "dry_run": True}
    assert all(e.variant == "baseline" and e.shadow.variant == "candidate" for e in events)
    sample = REGISTRY.get_sample_value
    assert sample("rollout_selection_total", {"rollout": rollout_id, "variant": "baseline", "reason": "default"}) == 3
    assert sample("rollout_decision_diff_total", {"rollout": rollout_id, "dimension": "steps", "changed": "true"}) == 1
    assert sample("rollout_decision_diff_total", {"rollout": rollout_id, "dimension": "agent", "changed": "false"}) == 1
    assert sample("rollout_shadow_errors_total", {"rollout": rollout_id}) == 2


async def test_shadow_serving_candidate_returns_its_result(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus
    await publish_command(js, rollout_id, "config", ControlState(canary_pct=100, config_version=1))
    async with make_client(settings, tmp_path) as client:
        result = await client.shadow(rollout_id, "u1", baseline=lambda: 1, candidate=lambda: 2, decision_id="d-42")
        assert result == 2
    events, _ = await read_events(js, subjects.events_filter(rollout_id))
    assert [(e.id, e.variant, e.shadow.variant, e.shadow.diff) for e in events] == [
        ("d-42", "candidate", "baseline", {"result": True})
    ]


async def test_served_variant_failure_reaches_the_caller_and_is_still_recorded(bus, settings, tmp_path, rollout_id) -> None:
    _, js = bus

    def broken() -> int:
        raise ValueError("baseline down")

    async with make_client(settings, tmp_path) as client:
        with pytest.raises(ValueError, match="baseline down"):
            await client.shadow(rollout_id, "u1", baseline=broken, candidate=lambda: 2, decision_id="d-1")
    events, _ = await read_events(js, subjects.events_filter(rollout_id))
    assert [(e.id, e.variant, e.shadow.variant, e.shadow.diff, e.shadow.error) for e in events] == [
        ("d-1", "baseline", "candidate", {}, None)
    ]


async def test_full_buffer_raises_for_sync_calls_and_waits_for_async_ones(bus, settings, tmp_path, rollout_id) -> None:
    async with make_client(settings, tmp_path, batch_size=10, max_buffered=10, linger_s=0.5) as client:
        for i in range(10):
            client.assign(rollout_id, f"u{i}")
        with pytest.raises(BufferFull, match="max_buffered=10"):
            client.assign(rollout_id, "one-too-many")
        # the async path waits for the sender to make room instead of failing
        await client.record_metric(rollout_id, "baseline", "latency_ms", 3.0)


async def test_start_fails_clearly_without_a_server_unless_offline_is_allowed(tmp_path) -> None:
    from rollout_engine.engine.bus import BusUnavailable
    from rollout_engine.engine.settings import load_settings

    dead = load_settings(env={}, nats_url="nats://127.0.0.1:1", data_dir=str(tmp_path), connect_timeout_s=0.2)
    with pytest.raises(BusUnavailable, match="no NATS server answered"):
        await make_client(dead, tmp_path).start()
    async with make_client(dead, tmp_path, allow_offline=True) as offline:
        assert offline.assign("checkout", "u1") == "baseline"  # the safe default: everyone on baseline
        await offline.flush()
        assert offline.outbox_depth == 1


def test_sdk_doc_shows_the_example_that_runs() -> None:
    doc = (REPO / "docs" / "sdk.md").read_text()
    example = (REPO / "docs" / "examples" / "example_service.py").read_text()
    assert f"```python\n{example}```" in doc, "docs/sdk.md and docs/examples/example_service.py differ"


async def test_example_service_runs(bus, nats_server, tmp_path) -> None:
    env = {**os.environ, "ROLLOUT_NATS_URL": nats_server.url, "ROLLOUT_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "example_service.py")],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "served 1000 requests" in done.stdout


async def test_on_change_reports_the_current_state_once_then_changes(bus, settings, tmp_path, rollout_id) -> None:
    """A rollout killed then resumed long ago is reported to a new instance as resumed, once."""
    _, js = bus
    configured = ControlState(canary_pct=5, config_version=1)
    killed = ControlState(canary_pct=0, kill_switch=True, config_version=2)
    resumed = ControlState(canary_pct=5, config_version=3)
    await publish_command(js, rollout_id, "config", configured)
    await publish_command(js, rollout_id, "kill_switch", killed, configured)
    resume = Resume(id=new_event_id(), rollout=rollout_id, time_ms=int(time.time() * 1000), producer="test",
                    actor="test", reason="fixed", before=killed, after=resumed)
    await js.publish(subjects.control(rollout_id, "resume"), encode(resume), headers={"Nats-Msg-Id": resume.id})
    seen: list[ControlState] = []
    async with make_client(settings, tmp_path, on_change=lambda r, s: r == rollout_id and seen.append(s)) as client:
        assert seen == [resumed]
        assert client.state(rollout_id) == resumed
        again = ControlState(canary_pct=0, kill_switch=True, config_version=4)
        await publish_command(js, rollout_id, "kill_switch", again, resumed)
        while len(seen) < 2:
            await asyncio.sleep(0.005)
    assert seen == [resumed, again]
