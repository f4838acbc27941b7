"""Hostile input never crashes decoding: it gives an event or the one validation error."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.events import Event, EventError, decode_json, decode_lenient, decode_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=6),
    max_leaves=20,
)
KEYS = ["kind", "id", "v", "rollout", "time_ms", "producer", "unit", "variant", "reason", "value", "name", "verdict"]
event_like = st.fixed_dictionaries(
    {},
    optional={k: json_values | st.sampled_from(["decision", "metric", "outcome", "tick", "r1", 1, 1.5]) for k in KEYS},
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_give_events_or_the_validation_error(data: bytes) -> None:
    try:
        events = decode_message(data)
    except EventError as exc:
        assert exc.field and exc.rule
    else:
        assert all(isinstance(e, Event) for e in events)
    good, bad = decode_lenient(data)
    assert all(isinstance(e, Event) for e in good)
    assert all(isinstance(r.error, EventError) for r in bad)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(event_like)
def test_random_json_and_msgpack_objects_give_events_or_the_validation_error(obj: dict) -> None:
    for decoder, encoded in (
        (decode_json, msgspec.json.encode(obj)),
        (decode_message, msgspec.msgpack.encode(obj)),
    ):
        try:
            result = decoder(encoded)
        except EventError as exc:
            assert exc.field and exc.rule
        else:
            assert result is not None


@settings(max_examples=200)
@given(st.lists(event_like, max_size=8))
def test_random_batches_split_into_good_and_rejected_items(items: list[dict]) -> None:
    good, bad = decode_lenient(msgspec.msgpack.encode(items))
    assert len(good) + len(bad) in (len(items), 1)  # per item, or the whole message rejected
