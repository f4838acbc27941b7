"""The engine's /metrics: log-derived metrics from a real stack, checked by promtool."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client.parser import text_string_to_metric_families

from rollout_engine.engine.stack import metrics as engine_metrics
from rollout_engine.engine.stack.metrics import BANDIT_ARM_SHARE, EVALUATIONS, serve_metrics
from rollout_engine.events import (
    Breach,
    ControlState,
    Escalation,
    KillSwitch,
    RecheckClosed,
    RecheckRequest,
    WouldKill,
    encode,
    subjects,
)
from rollout_engine.events.ids import new_event_id


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _publish_control(js, rollout: str) -> None:
    before, after = ControlState(canary_pct=10), ControlState(kill_switch=True)
    breach = Breach(guard="latency", observed=1850.0, threshold=1600.0, candidate_n=40)
    now = 1_700_000_000_000
    events = [
        KillSwitch(id=new_event_id(), rollout=rollout, time_ms=now, producer="rollback", actor="rollback",
                   reason="latency", before=before, after=after, breaches=[breach]),
        KillSwitch(id=new_event_id(), rollout=rollout, time_ms=now, producer="api", actor="alice",
                   reason="manual", before=after, after=after),
        WouldKill(id=new_event_id(), rollout=rollout, time_ms=now, producer="rollback", actor="rollback",
                  reason="strict", policy_name="strict", before=before, after=after, breaches=[breach]),
        Escalation(id=new_event_id(), rollout=rollout, time_ms=now, producer="rollback", actor="rollback",
                   reason="quality x3", trigger="quality", count=3),
        RecheckRequest(id=new_event_id(), rollout=rollout, time_ms=now, producer="verification",
                       decision_id="d1", variant="candidate", attempt=1, max_attempts=3, first_seen_ms=now),
        RecheckRequest(id=new_event_id(), rollout=rollout, time_ms=now, producer="verification",
                       decision_id="d2", variant="candidate", attempt=1, max_attempts=3, first_seen_ms=now),
        RecheckClosed(id=new_event_id(), rollout=rollout, time_ms=now, producer="verification",
                      decision_id="d1", variant="candidate", status="resolved", attempts=1, first_seen_ms=now),
    ]
    for event in events:  # each on its own subject: the subject says what a message may carry
        await js.publish(subjects.for_event(event), encode(event))


async def test_exposition_has_the_engine_metrics_and_passes_promtool(bus, rollout_id) -> None:
    _nc, js = bus
    await _publish_control(js, rollout_id)
    consumer = f"metrics-{rollout_id}"[:60]
    await js.add_consumer(subjects.LOG_STREAM, ConsumerConfig(durable_name=consumer, ack_policy=AckPolicy.EXPLICIT))
    await js.publish(subjects.dlq(consumer), b"garbage", headers={"Ro-Reason": "not msgpack"})
    BANDIT_ARM_SHARE.labels(rollout_id, "safe").set(0.7)
    BANDIT_ARM_SHARE.labels(rollout_id, "normal").set(0.3)
    EVALUATIONS.labels("pass").inc()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_metrics(js, 0, stop, interval_s=0.2, multiproc_dir="", ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        text = await asyncio.to_thread(_scrape, engine_metrics.LAST_PORT)
    finally:
        stop.set()
        await task
        await js.delete_consumer(subjects.LOG_STREAM, consumer)
    samples = _samples(text)
    assert samples[("rollout_kill_switches_total", (("rollout", rollout_id), ("source", "auto")))] == 1
    assert samples[("rollout_kill_switches_total", (("rollout", rollout_id), ("source", "manual")))] == 1
    assert samples[("rollout_breaches_total", (("action", "kill"), ("guard", "latency")))] >= 1
    assert samples[("rollout_breaches_total", (("action", "would_kill"), ("guard", "latency")))] >= 1
    assert samples[("rollout_would_kills_total", (("rollout", rollout_id),))] == 1
    assert samples[("rollout_escalations_total", (("trigger", "quality"),))] >= 1
    assert samples[("rollout_dead_letters_total", (("consumer", consumer),))] == 1
    assert samples[("rollout_consumer_lag_messages", (("consumer", consumer),))] > 0
    assert ("rollout_consumer_messages_consumed_total", (("consumer", consumer),)) in samples
    assert ("rollout_consumer_redelivery_pending_messages", (("consumer", consumer),)) in samples
    assert samples[("rollout_detection_latency_seconds_count", ())] >= 1
    assert samples[("rollout_bandit_arm_share", (("arm", "safe"), ("rollout", rollout_id)))] == 0.7
    assert samples[("rollout_evaluations_total", (("result", "pass"),))] >= 1

    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (apt-get install prometheus; .ci/run installs it)"
    check = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                    capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr


@pytest.mark.parametrize("seconds,bucket", [(0.01, "0.05"), (3.0, "5.0"), (5000.0, "+Inf")])
def test_detection_latency_lands_in_the_right_bucket(seconds: float, bucket: str) -> None:
    metrics = engine_metrics.LogMetrics()
    metrics._latency(seconds)
    histogram = next(f for f in metrics.collect() if f.name == "rollout_detection_latency_seconds")
    counts = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    first = next(le for le, n in counts.items() if n == 1)
    assert first == bucket


async def _scrape_until(predicate, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = _samples(await asyncio.to_thread(_scrape, engine_metrics.LAST_PORT))
        if predicate(samples) or asyncio.get_running_loop().time() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def test_a_rollouts_first_kill_takes_its_counter_from_0_to_1(stack, rollout_id) -> None:
    """increase() and changes() see the first kill only if the series existed at 0 before it.

    On a server of its own: it publishes a tick, which the session server's log must not hold.
    """
    from rollout_engine.engine.stack.ticks import make_tick
    from rollout_engine.events import Decision

    _settings, _nc, js = stack
    decision = Decision(id=new_event_id(), rollout=rollout_id, time_ms=1_000, producer="svc", unit="u1",
                        variant="candidate", reason="canary", canary_pct=10, config_version=1, propensity=0.1)
    await js.publish(subjects.event(rollout_id, "decision"), encode(decision))
    tick = make_tick(1_700_000_123_456, 250)
    await js.publish(subjects.TICK, encode(tick))
    auto = ("rollout_kill_switches_total", (("rollout", rollout_id), ("source", "auto")))
    manual = ("rollout_kill_switches_total", (("rollout", rollout_id), ("source", "manual")))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_metrics(js, 0, stop, interval_s=0.1, multiproc_dir="", ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        before = await _scrape_until(lambda s: auto in s)
        assert before[auto] == 0 and before[manual] == 0
        assert before[("rollout_would_kills_total", (("rollout", rollout_id),))] == 0
        assert before[("rollout_breaches_total", (("action", "kill"), ("guard", "srm")))] >= 0
        assert before[("rollout_last_tick_timestamp_seconds", ())] >= tick.time_ms / 1000
        kill = KillSwitch(id=new_event_id(), rollout=rollout_id, time_ms=2_000, producer="rollback", actor="rollback",
                          reason="latency", before=ControlState(canary_pct=10), after=ControlState(kill_switch=True))
        await js.publish(subjects.control(rollout_id, "kill_switch"), encode(kill))
        after = await _scrape_until(lambda s: s.get(auto) == 1)
    finally:
        stop.set()
        await task
    assert after[auto] == 1 and after[manual] == 0
