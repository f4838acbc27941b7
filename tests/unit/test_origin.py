"""The subject is authoritative: a body may carry only what its subject may carry."""

from __future__ import annotations

import msgspec
import pytest

from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Decision,
    KillSwitch,
    Metric,
    Outcome,
    Resume,
    Tick,
    decode_from_log,
    encode,
    encode_batch,
    validate,
)
from rollout_engine.events.errors import EventError

BASE = {"rollout": "r1", "time_ms": 1_000, "producer": "svc"}
METRIC = Metric(id="m1", variant="candidate", name="latency_ms", value=5.0, **BASE)
DECISION = Decision(id="d1", unit="u1", variant="candidate", reason="canary", canary_pct=50.0, config_version=1,
                    propensity=0.5, **BASE)
OUTCOME = Outcome(id="o1", decision_id="d1", variant="candidate", verdict="win", **BASE)
STATE = ControlState(canary_pct=50.0)
KILL = KillSwitch(id="k1", actor="rollback", reason="forged", before=STATE,
                  after=msgspec.structs.replace(STATE, kill_switch=True, canary_pct=0.0), **BASE)
RESUME = Resume(id="s1", actor="ops", reason="forged", before=STATE, after=STATE, **BASE)
CONFIG = ConfigChange(id="c1", actor="ops", reason="forged", before=STATE, after=STATE, policy={"guards": []}, **BASE)
TICK = Tick(id="t1", time_ms=4_102_444_800_000, producer="engine")


@pytest.mark.parametrize("forged", [KILL, RESUME, CONFIG, TICK], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("kind", ["decision", "outcome", "metric"])
def test_a_command_or_tick_on_an_event_subject_is_rejected_naming_the_mismatch(forged, kind: str) -> None:
    good, bad = decode_from_log(f"ro.evt.r1.{kind}", encode(forged))
    assert good == []
    assert len(bad) == 1 and bad[0].error.field == "$.kind"
    assert f"ro.evt.r1.{kind}" in bad[0].reason and f"only {kind!r}" in bad[0].reason


def test_each_producer_kind_only_on_its_own_subject() -> None:
    for event, kind in ((DECISION, "decision"), (OUTCOME, "outcome"), (METRIC, "metric")):
        assert decode_from_log(f"ro.evt.r1.{kind}", encode(event)) == ([event], [])
        for other in {"decision", "outcome", "metric"} - {kind}:
            assert decode_from_log(f"ro.evt.r1.{other}", encode(event))[0] == []


def test_a_body_of_another_rollout_is_rejected() -> None:
    good, bad = decode_from_log("ro.evt.r2.metric", encode(METRIC))
    assert good == [] and bad[0].error.field == "$.rollout" and "'r1'" in bad[0].reason and "'r2'" in bad[0].reason
    assert decode_from_log("ro.ctl.r2.kill_switch", encode(KILL))[0] == []


def test_commands_only_on_their_own_control_subject() -> None:
    assert decode_from_log("ro.ctl.r1.kill_switch", encode(KILL)) == ([KILL], [])
    assert decode_from_log("ro.ctl.r1.kill_switch.3", encode(KILL)) == ([KILL], [])  # partitioned log
    assert decode_from_log("ro.ctl.r1.resume", encode(KILL))[0] == []
    assert decode_from_log("ro.ctl.r1.metric", encode(METRIC))[0] == []  # a producer kind is no command


def test_ticks_only_on_the_tick_subject_and_only_of_the_engine() -> None:
    assert decode_from_log("ro.tick", encode(TICK)) == ([TICK], [])
    assert decode_from_log("ro.tick", encode(METRIC))[0] == []
    stray = msgspec.structs.replace(TICK, rollout="r1")
    assert decode_from_log("ro.tick", encode(stray))[1][0].error.field == "$.rollout"


def test_a_batch_keeps_its_good_events_and_names_the_forged_item() -> None:
    good, bad = decode_from_log("ro.evt.r1.metric.0", encode_batch([METRIC, KILL, METRIC]))
    assert good == [METRIC, METRIC]
    assert [(r.index, r.error.field) for r in bad] == [(1, "$.kind")]


def test_a_subject_that_does_not_parse_rejects_the_whole_message() -> None:
    good, bad = decode_from_log("ro.evt.r1.metric.x", encode(METRIC))
    assert good == [] and bad[0].index == -1 and bad[0].error.field == "subject"


def test_json_on_the_wire_is_named_as_json() -> None:
    body = msgspec.json.encode(METRIC)
    _, bad = decode_from_log("ro.evt.r1.metric", body)
    assert "JSON, expected msgpack" in bad[0].reason
    assert "Expected object" not in bad[0].reason


@pytest.mark.parametrize(("name", "unit"), [("latency_ms", "ms"), ("cost_cents", "cents"), ("wait", "s")])
def test_negative_durations_and_amounts_are_refused(name: str, unit: str) -> None:
    negative = msgspec.structs.replace(METRIC, name=name, unit=unit, value=-1.0)
    _, bad = decode_from_log("ro.evt.r1.metric", encode(negative))
    assert bad[0].error.field == "$.value"
    with pytest.raises(EventError, match=r"\$\.value"):
        validate(negative)  # the producer hears it before sending
    assert decode_from_log("ro.evt.r1.metric", encode(msgspec.structs.replace(METRIC, name="delta", value=-1.0)))[1] == []
