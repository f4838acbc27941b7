"""Hostile bytes and ids at the event contract (extends ``test_contract_fuzz.py``, which
fuzzes random bytes, objects and batches).

Here: subject injection in every id field of every producer event and in every subject
builder; payloads at, just above and far above the 1 MiB limit; batches at and above
1000 events; poison nesting that once raised ``RecursionError`` out of the decoder (a
consumer would have crashed on it at every restart).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.events import (
    EventError,
    decode,
    decode_json,
    decode_lenient,
    decode_message,
    subjects,
)
from rollout_engine.events.codec import MAX_BATCH, MAX_MESSAGE_BYTES
from rollout_engine.events.ids import is_token

INJECTIONS = ["a.b", "*", ">", "ro.ctl.victim.kill_switch", "x y", "x\ny", "ok\n", "\x00", "a*", "a>", "", ".",
              "é", "a" * 65, "$SRV", "x\t", "\u202e", "a/b"]

BASE: dict[str, dict[str, Any]] = {
    "decision": {"unit": "u1", "variant": "candidate", "reason": "canary", "canary_pct": 5.0,
                 "config_version": 1, "propensity": 0.05, "context": "ctx"},
    "outcome": {"decision_id": "d1", "variant": "candidate", "verdict": "win"},
    "metric": {"variant": "candidate", "name": "latency_ms", "value": 1.0, "unit": "ms", "decision_id": "d1"},
}
ID_FIELDS = {"decision": ["id", "rollout", "producer", "variant", "context"],
             "outcome": ["id", "rollout", "producer", "variant", "decision_id"],
             "metric": ["id", "rollout", "producer", "variant", "name", "unit", "decision_id"]}


def event(kind: str, **override: Any) -> dict[str, Any]:
    return {"kind": kind, "v": 1, "id": "e1", "rollout": "r1", "time_ms": 1, "producer": "p", **BASE[kind], **override}


@pytest.mark.parametrize("kind", sorted(BASE))
def test_the_base_events_are_valid(kind: str) -> None:
    assert decode(msgspec.msgpack.encode(event(kind)))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(BASE)), data=st.data(),
       bad=st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=70)))
def test_an_injected_id_is_refused_in_every_field_of_every_event(kind: str, data: st.DataObject, bad: str) -> None:
    field = data.draw(st.sampled_from(ID_FIELDS[kind]))
    raw = msgspec.msgpack.encode(event(kind, **{field: bad}))
    good, rejected = decode_lenient(raw)
    if is_token(bad):
        assert good and not rejected
        return
    assert not good and len(rejected) == 1
    assert field in rejected[0].error.field, (field, rejected[0].error)
    with pytest.raises(EventError):
        decode_json(msgspec.json.encode(event(kind, **{field: bad})))


@pytest.mark.parametrize("bad", INJECTIONS)
def test_every_subject_builder_refuses_an_injected_id(bad: str) -> None:
    builders = [lambda: subjects.event(bad, "metric"), lambda: subjects.control(bad, "kill_switch"),
                lambda: subjects.stats(bad), lambda: subjects.dlq(bad), lambda: subjects.api(bad),
                lambda: subjects.events_filter(bad), lambda: subjects.control_filter(bad)]
    for build in builders:
        with pytest.raises((EventError, ValueError)):
            build()


def _padded(size: int) -> bytes:
    """A valid one-event message of exactly ``size`` bytes (unknown fields are ignored)."""
    base = event("metric", pad="")
    overhead = len(msgspec.msgpack.encode(base))
    for pad in range(size - overhead - 8, size - overhead + 1):
        data = msgspec.msgpack.encode({**base, "pad": "x" * pad})
        if len(data) == size:
            return data
    raise AssertionError(f"cannot pad to {size}")


def test_a_payload_at_the_limit_decodes_and_one_byte_more_is_refused() -> None:
    at = _padded(MAX_MESSAGE_BYTES)
    assert len(decode_message(at)) == 1
    over = _padded(MAX_MESSAGE_BYTES + 1)
    good, [rejected] = decode_lenient(over)
    assert good == [] and rejected.error.field == "payload" and "limit" in str(rejected.error)
    good, [rejected] = decode_lenient(b"\x00" * (8 * MAX_MESSAGE_BYTES))
    assert rejected.error.field == "payload"
    with pytest.raises(EventError):
        decode_json(b" " * (MAX_MESSAGE_BYTES + 1))


def test_a_batch_at_the_limit_decodes_and_one_more_event_is_refused() -> None:
    item = event("metric")
    assert len(decode_message(msgspec.msgpack.encode([{**item, "id": f"e{i}"} for i in range(MAX_BATCH)]))) == MAX_BATCH
    good, [rejected] = decode_lenient(msgspec.msgpack.encode([{**item, "id": f"e{i}"} for i in range(MAX_BATCH + 1)]))
    assert good == [] and rejected.error.field == "batch"


@pytest.mark.parametrize("poison", [b"\x91" * 200_000, b"\x81\xa1k" * 100_000, b"\xdc\x00\x01" * 100_000])
def test_poison_nesting_is_a_rejected_item_not_a_crash(poison: bytes) -> None:
    good, rejected = decode_lenient(poison)
    assert good == [] and len(rejected) == 1 and rejected[0].error.field == "payload"
    with pytest.raises(EventError):
        decode_message(poison)
    with pytest.raises(EventError):
        decode(poison)


def test_deep_json_is_refused_with_the_validation_error() -> None:
    with pytest.raises(EventError):
        decode_json(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(EventError):
        decode_json(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
