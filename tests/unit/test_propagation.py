"""Who applied what, without I/O: judging instances against a revision, the metrics fold,
and the acknowledgement record's rules."""

from __future__ import annotations

import pytest

from rollout_engine.engine.api.propagation import AckEntry, judge
from rollout_engine.engine.sdk.acks import instance_id
from rollout_engine.engine.stack.propagation_metrics import PropagationMetrics
from rollout_engine.events import ControlState, EventError, KillSwitch, Resume, is_token, subjects
from rollout_engine.events.acks import AppliedRevision, InstanceAck, decode_ack, encode_ack

NOW = 1_800_000_000_000


def entry(instance: str, revision: int, *, latency_ms: float | None = None, seen_ago_ms: int = 100,
          ttl_ms: int = 2_000, rollout: str = "r1", service: str = "checkout") -> AckEntry:
    published = (NOW - 5_000) * 1000
    applied = AppliedRevision(revision, f"cmd-{revision}", published if latency_ms is not None else 0,
                              published + round((latency_ms or 0) * 1000))
    ack = InstanceAck(service=service, instance=instance, ttl_ms=ttl_ms, rollouts={rollout: applied})
    return AckEntry(service, instance, NOW - seen_ago_ms, ack)


def test_every_live_instance_applied_reads_like_the_runbook_line() -> None:
    result = judge("r1", 10, [entry("a", 10, latency_ms=1.5), entry("b", 10, latency_ms=3.2)], NOW,
                   command="kill_switch")
    assert (result.following, result.applied, result.lagging, result.complete) == (2, 2, 0, True)
    assert result.summary() == "applied by 2 of 2 instances, slowest 3.2 ms"


def test_an_older_revision_lags_and_a_silent_instance_is_stale_not_following() -> None:
    result = judge("r1", 10, [entry("a", 10, latency_ms=1.0), entry("b", 9), entry("c", 9, seen_ago_ms=2_500)], NOW)
    states = {i.instance: i.status for i in result.instances}
    assert states == {"a": "applied", "b": "lagging", "c": "stale"}
    assert (result.following, result.applied, result.lagging, result.stale, result.complete) == (2, 1, 1, 1, False)
    assert "lagging: checkout/b" in result.summary() and "1 stale" in result.summary()
    assert [i["instance"] for i in result.to_json()["instances"]] == ["b", "c", "a"]  # lagging first


def test_a_newer_revision_counts_as_applied_but_not_as_this_commands_latency() -> None:
    result = judge("r1", 10, [entry("a", 12, latency_ms=40.0), entry("b", 10, latency_ms=2.0)], NOW)
    assert result.applied == 2 and result.slowest_ms == 2.0


def test_an_instance_that_never_saw_the_rollout_lags_its_first_command() -> None:
    result = judge("r2", 3, [entry("a", 10, rollout="r1")], NOW)
    assert result.lagging == 1 and result.instances[0].revision == 0


def test_no_live_instance_is_complete_and_says_so() -> None:
    result = judge("r1", 10, [entry("a", 9, seen_ago_ms=60_000)], NOW)
    assert result.complete and result.following == 0
    assert result.summary().startswith("no live SDK instance follows it")


def test_states_read_at_start_up_have_no_latency() -> None:
    result = judge("r1", 10, [entry("a", 10)], NOW)
    assert result.slowest_ms is None and "read at start-up" in result.summary()


def test_unreadable_reports_are_counted_apart() -> None:
    bad = AckEntry("checkout", "x", NOW, None, "not an InstanceAck")
    result = judge("r1", 1, [bad, entry("a", 1)], NOW)
    assert result.unreadable == 1 and result.following == 1


def test_the_key_is_authoritative_for_the_identity() -> None:
    data = encode_ack(InstanceAck(service="search", instance="pod-1"))
    assert decode_ack(data, "search", "pod-1").service == "search"
    with pytest.raises(EventError, match="authoritative"):
        decode_ack(data, "checkout", "pod-1")
    with pytest.raises(EventError):
        decode_ack(b"\x81\xa4kind\xa3bad", "search", "pod-1")


def test_instance_ids_are_subject_tokens_and_unique() -> None:
    ids = {instance_id("web-7.prod.example.com", 1) for _ in range(100)}
    assert len(ids) == 100 and all(is_token(i) and i.startswith("web-7-1-") for i in ids)
    assert subjects.ack_key("checkout", "web-7-1-abcdef") == "checkout.web-7-1-abcdef"
    assert subjects.parse_ack_subject("$KV.ro_acks.checkout.web-7") == ("checkout", "web-7")
    with pytest.raises(ValueError):
        subjects.parse_ack_subject("$KV.ro_acks.checkout.web.7")
    assert subjects.ack_filter("checkout") == "$KV.ro_acks.checkout.*"


def _kill(rollout: str) -> KillSwitch:
    killed = ControlState(kill_switch=True, config_version=2)
    return KillSwitch(id="k1", rollout=rollout, time_ms=NOW, producer="api", actor="op", reason="x",
                      before=ControlState(), after=killed)


def _series(metrics: PropagationMetrics) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for family in metrics.collect() for s in family.samples}


def test_series_exist_at_zero_from_the_first_command() -> None:
    metrics = PropagationMetrics()
    metrics.note_command(_kill("r1"), 7, NOW)
    series = _series(metrics)
    assert series[("rollout_instances_following", ("r1",))] == 0
    assert series[("rollout_instances_lagging", ("r1",))] == 0
    assert series[("rollout_kill_unapplied_seconds", ("r1",))] == 0
    assert series[("rollout_control_propagation_seconds_count", ())] == 0


def test_a_lagging_instance_holds_the_kill_unapplied_clock_and_latencies_count_once() -> None:
    metrics = PropagationMetrics()
    metrics.note_command(_kill("r1"), 7, NOW - 12_000)
    reports = [entry("a", 7, latency_ms=0.8), entry("b", 6)]
    metrics.observe_acks(reports, NOW)
    metrics.observe_acks(reports, NOW)  # the same reports again (a heartbeat): no new observation
    series = _series(metrics)
    assert series[("rollout_instances_following", ("r1",))] == 2
    assert series[("rollout_instances_lagging", ("r1",))] == 1
    assert series[("rollout_kill_unapplied_seconds", ("r1",))] == pytest.approx(12.0)
    assert series[("rollout_control_propagation_seconds_count", ())] == 1
    assert series[("rollout_control_propagation_seconds_bucket", ("0.001",))] == 1
    metrics.observe_acks([entry("a", 7, latency_ms=0.8), entry("b", 7, latency_ms=30.0)], NOW)
    series = _series(metrics)
    assert series[("rollout_kill_unapplied_seconds", ("r1",))] == 0
    assert series[("rollout_control_propagation_seconds_count", ())] == 2


def test_a_resume_is_not_a_kill_and_stale_instances_are_counted() -> None:
    metrics = PropagationMetrics()
    resume = Resume(id="r", rollout="r1", time_ms=NOW, producer="api", actor="op", reason="",
                    before=ControlState(kill_switch=True), after=ControlState(canary_pct=5.0))
    metrics.note_command(resume, 9, NOW - 60_000)
    metrics.observe_acks([entry("a", 8), entry("b", 8, seen_ago_ms=10_000)], NOW)
    series = _series(metrics)
    assert series[("rollout_instances_lagging", ("r1",))] == 1
    assert series[("rollout_kill_unapplied_seconds", ("r1",))] == 0
    assert series[("rollout_instances_stale", ())] == 1


async def test_applied_goes_with_killed_only() -> None:
    import argparse

    from rollout_engine.engine.cli.common import CliError
    from rollout_engine.engine.cli.wait import parse_condition
    from rollout_engine.engine.cli.wait_applied import until_applied

    args = argparse.Namespace(applied=True, condition=parse_condition("healthy"), timeout=0.0)
    with pytest.raises(CliError, match="--applied goes with --for killed"):
        await until_applied(None, args, "met", None, 0.0)
    args = argparse.Namespace(applied=False, condition=parse_condition("healthy"), timeout=0.0)
    assert await until_applied(None, args, "met", None, 0.0) == ("met", None)
