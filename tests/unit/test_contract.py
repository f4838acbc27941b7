"""The wire contract: round trips, validation rules, batches and the one error type."""

from __future__ import annotations

import math

import msgspec
import pytest

from rollout_engine.events import (
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    BanditConfig,
    Breach,
    ConfigChange,
    ControlState,
    Decision,
    Escalation,
    EventError,
    Evidence,
    Guardrail,
    GuardrailState,
    KillSwitch,
    Metric,
    Notification,
    Outcome,
    RecheckClosed,
    RecheckRequest,
    Resume,
    ShadowResult,
    Tick,
    WouldKill,
    decode,
    decode_json,
    decode_lenient,
    decode_message,
    encode,
    encode_batch,
    encode_json,
    kind_of,
    new_event_id,
)
from rollout_engine.events.schema import EVENT_TYPES

BASE = {"rollout": "checkout-v2", "time_ms": 1_700_000_000_000, "producer": "svc-1"}


def _sample(kind: str):
    state = ControlState(canary_pct=5.0, config_version=3, policy_version=1)
    killed = ControlState(canary_pct=0.0, kill_switch=True, config_version=4, policy_version=1)
    samples = {
        "decision": Decision(
            id=new_event_id(), unit="user@example.com", variant="candidate", reason="canary",
            canary_pct=5.0, config_version=3, propensity=0.05, dry_run=True,
            shadow=ShadowResult(variant="baseline", diff={"agent": True, "steps": False}, latency_ms=12.5),
            **BASE,
        ),
        "outcome": Outcome(
            id=new_event_id(), decision_id=new_event_id(), variant="candidate", verdict="win",
            quality=91.5, reward=1.0, confidence=0.93, **BASE,
        ),
        "metric": Metric(id=new_event_id(), variant="candidate", name="latency_ms", value=1234.5, unit="ms", **BASE),
        "kill_switch": KillSwitch(
            id="kill-0123abcd", actor="rollback", reason="latency (candidate p95: 1850ms > 1600ms)",
            before=state, after=killed, cause_id=new_event_id(),
            breaches=[Breach(guard="latency_p95", observed=1850.0, threshold=1600.0, candidate_n=40, p_value=0.001)],
            **BASE,
        ),
        "resume": Resume(id=new_event_id(), actor="alice", reason="fix_applied", before=killed, after=state, **BASE),
        "config": ConfigChange(
            id=new_event_id(), actor="alice", reason="initial_canary", before=ControlState(), after=state,
            policy={"guards": [{"name": "latency_p95", "threshold": 1600}]}, **BASE,
        ),
        "tick": Tick(id="tick-1700000000000", time_ms=1_700_000_000_000, producer="engine"),
        "escalation": Escalation(
            id="escalate-0123abcd", actor="rollback", reason="latency breached 3 times in 24h",
            trigger="latency", count=3, expires_ms=1_700_014_400_000, policy_version=1, **BASE,
        ),
        "would_kill": WouldKill(
            id="would_kill-0123abcd", actor="rollback", reason="cost (candidate mean: 4.0¢ > 3.0¢)",
            policy_name="strict", policy_version=2, before=state, after=killed,
            breaches=[Breach(guard="cost", observed=4.0, threshold=3.0, candidate_n=40)], **BASE,
        ),
        "guardrail": Guardrail(
            id="cooldown-0123abcd", actor="bandit", reason="loss in normal mode", before=GuardrailState(),
            after=GuardrailState(cooldown_until_ms=1_700_001_800_000), cause_id=new_event_id(), **BASE,
        ),
        "recheck": RecheckRequest(
            id="recheck-0123abcd", decision_id=new_event_id(), variant="candidate", attempt=1,
            max_attempts=3, first_seen_ms=1_700_000_000_000, **BASE,
        ),
        "bandit_config": BanditConfig(
            id=new_event_id(), actor="alice", reason="learn the best prompt",
            bandit={"arms": ["a", "b", "c"], "floor": 0.02}, verification={"max_attempts": 3}, **BASE,
        ),
        "recheck_closed": RecheckClosed(
            id="recheck_closed-0123abcd", decision_id=new_event_id(), variant="candidate",
            status="expired", attempts=3, first_seen_ms=1_700_000_000_000,
            evidence=[Evidence(outcome_id=new_event_id(), time_ms=1_700_000_000_000, verdict="inconclusive", confidence=0.4)],
            **BASE,
        ),
        "notification": Notification(
            id="notification-0123abcd", actor="notifier", target="oncall", command_id="kill-0123abcd",
            command_kind="kill_switch", delivery_id="notify-0123abcd", status="failed", attempt=2,
            detail="HTTP 503", **BASE,
        ),
    }
    return samples[kind]


KINDS = [kind_of(t) for t in EVENT_TYPES]


@pytest.mark.parametrize("kind", KINDS)
def test_every_event_type_round_trips_in_msgpack_and_json(kind: str) -> None:
    event = _sample(kind)
    assert kind_of(event) == kind
    assert decode(encode(event)) == event
    assert decode_json(encode_json(event)) == event
    assert decode_message(encode(event)) == [event]


def test_batch_of_events_decodes_as_list_and_single_form_is_also_accepted() -> None:
    events = [_sample("metric") for _ in range(10)]
    assert decode_message(encode_batch(events)) == events
    assert decode_message(encode(events[0])) == [events[0]]


def test_batch_over_limit_is_refused_on_both_sides() -> None:
    events = [_sample("metric")] * (MAX_BATCH + 1)
    with pytest.raises(EventError, match="at most"):
        encode_batch(events)
    payload = msgspec.msgpack.encode(events)
    if len(payload) <= MAX_MESSAGE_BYTES:
        with pytest.raises(EventError, match="at most"):
            decode_message(payload)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("rollout", "a.b", "regex"),
        ("rollout", "a*", "regex"),
        ("rollout", "a>", "regex"),
        ("rollout", "a b", "regex"),
        ("rollout", "x" * 65, "length"),
        ("rollout", "", "length"),
        ("producer", "p\n", "regex"),
        ("variant", "ro.ctl.>", "regex"),
        ("value", math.nan, ">="),
        ("value", math.inf, "<="),
        ("value", -math.inf, ">="),
        ("v", 0, ">="),
        ("time_ms", -1, ">="),
    ],
)
def test_invalid_field_raises_one_error_naming_field_and_rule(field: str, value: object, rule: str) -> None:
    raw = msgspec.to_builtins(_sample("metric"))
    raw[field] = value
    with pytest.raises(EventError) as info:
        decode(msgspec.msgpack.encode(raw))
    assert info.value.field == f"$.{field}"
    assert rule in info.value.rule


def test_unknown_kind_names_the_known_ones() -> None:
    raw = msgspec.to_builtins(_sample("metric")) | {"kind": "teleport"}
    with pytest.raises(EventError, match="unknown event kind 'teleport'") as info:
        decode(msgspec.msgpack.encode(raw))
    assert info.value.field == "$.kind"


def test_newer_schema_version_says_upgrade() -> None:
    raw = msgspec.to_builtins(_sample("metric")) | {"v": 2}
    with pytest.raises(EventError, match="newer"):
        decode(msgspec.msgpack.encode(raw))


def test_unknown_verdict_is_refused() -> None:
    raw = msgspec.to_builtins(_sample("outcome")) | {"verdict": "maybe"}
    with pytest.raises(EventError) as info:
        decode(msgspec.msgpack.encode(raw))
    assert info.value.field == "$.verdict"


def test_oversized_and_empty_messages_are_refused() -> None:
    with pytest.raises(EventError, match="over the"):
        decode_message(b"\x90" + b"\x00" * MAX_MESSAGE_BYTES)
    with pytest.raises(EventError, match="empty"):
        decode_message(b"")


def test_lenient_decode_keeps_good_items_and_rejects_bad_ones_with_their_index() -> None:
    good = [msgspec.to_builtins(_sample("metric")) for _ in range(3)]
    bad_kind = good[0] | {"kind": "nope"}
    bad_nan = good[0] | {"value": math.nan}
    payload = msgspec.msgpack.encode([good[0], bad_kind, good[1], bad_nan, good[2]])
    events, rejected = decode_lenient(payload)
    assert len(events) == 3
    assert [r.index for r in rejected] == [1, 3]
    assert "unknown event kind" in rejected[0].reason and rejected[0].reason.startswith("item 1:")
    assert decode_lenient(rejected[1].data)[1]  # the rejected bytes are the original item


def test_garbage_is_rejected_whole() -> None:
    events, rejected = decode_lenient(b"\xc1\xc1garbage")
    assert events == [] and len(rejected) == 1 and rejected[0].index == -1


def test_event_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_event_id(1_000 + i // 10) for i in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


def test_unit_ids_may_hold_any_printable_text_but_no_control_characters() -> None:
    raw = msgspec.to_builtins(_sample("decision"))
    assert decode(msgspec.msgpack.encode(raw | {"unit": "user@example.com/é"})).unit == "user@example.com/é"
    with pytest.raises(EventError):
        decode(msgspec.msgpack.encode(raw | {"unit": "a\x1b[31m"}))


@pytest.mark.parametrize("bad", ["a.b", "a\nb", "ok\n", "a b", "*", ">", "x" * 65])
@pytest.mark.parametrize("field", ["id", "rollout", "producer", "variant", "name", "unit", "decision_id"])
def test_every_id_field_of_a_batch_is_checked_and_only_the_bad_item_is_rejected(field: str, bad: str) -> None:
    items = [msgspec.to_builtins(_sample("metric")) | {"decision_id": "d1"} for _ in range(5)]
    items[2] = items[2] | {field: bad}
    good, rejected = decode_lenient(msgspec.msgpack.encode(items))
    assert len(good) == 4
    assert [r.index for r in rejected] == [2]
    assert rejected[0].error.field == f"$.{field}"


def test_validate_refuses_what_constructors_let_through() -> None:
    from rollout_engine.events import validate

    bad = Metric(id=new_event_id(), variant="a.b", name="latency_ms", value=1.0, **BASE)
    with pytest.raises(EventError) as info:
        validate(bad)
    assert info.value.field == "$.variant"
    good = _sample("metric")
    assert validate(good) == good


def test_a_missing_field_is_named_by_its_json_path() -> None:
    """docs/events.md promises a JSON path, also when a required field is absent."""
    metric = msgspec.to_builtins(_sample("metric"))
    del metric["variant"]
    with pytest.raises(EventError, match=r"\$\.variant: required field is missing") as top:
        decode(msgspec.msgpack.encode(metric))
    assert top.value.field == "$.variant"
    kill = msgspec.to_builtins(KillSwitch(id=new_event_id(), actor="a", reason="r", before=ControlState(),
                                          after=ControlState(kill_switch=True), **BASE,
                                          breaches=[Breach(guard="latency", observed=2.0, threshold=1.0)]))
    del kill["breaches"][0]["guard"]
    _events, rejected = decode_lenient(msgspec.msgpack.encode([kill]))
    assert rejected[0].error.field == "$.breaches[0].guard"
