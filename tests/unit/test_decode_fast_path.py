"""The batch fast path of ``decode_from_log`` accepts and rejects exactly what the per-event rules do.

``events.checks.batch_ok`` and ``events.origin.SubjectRule.all_ok`` judge a whole batch
with C loops (``map``, ``set``, ``bytes.translate``). The reference below is the decoder
as it was before them: one regex over every Id value, one Python call per event for the
value rule and for the subject rule. Random batches (mixed kinds, wrong rollouts, ids
with newlines or of the wrong length, negative, NaN and -0.0 values of concerned and
unconcerned metrics and units, empty batches, single events) must give the same good
events and the same rejected indexes, reasons and bytes.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.events import (
    ControlState,
    Decision,
    Event,
    KillSwitch,
    Metric,
    Outcome,
    Tick,
    decode_from_log,
    encode,
)
from rollout_engine.events.checks import (
    _ID_FIELDS,
    _TOKEN_BYTES,
    NON_NEGATIVE_METRICS,
    NON_NEGATIVE_UNITS,
    batch_ok,
    check_values,
    negative_metrics,
)
from rollout_engine.events.codec import (
    MAX_BATCH,
    Rejected,
    _is_array,
    _many,
    _raw_items,
    decode,
    decode_lenient,
)
from rollout_engine.events.errors import EventError
from rollout_engine.events.fields import Id
from rollout_engine.events.ids import TOKEN_MAX, TOKEN_PATTERN
from rollout_engine.events.origin import SubjectRule, rule_of
from rollout_engine.events.schema import AnyEvent, kind_of


# --- the reference: the per-event rules as they were --------------------------------------
def _old_ids_ok(events: list[AnyEvent]) -> bool:
    values = [v for e in events for name in itertools.chain(*_ID_FIELDS[type(e)])
              if (v := getattr(e, name)) is not None]
    joined = "\n".join(values) + "\n"
    return (joined.count("\n") == len(values)
            and re.fullmatch(rf"(?:[A-Za-z0-9_-]{{1,{TOKEN_MAX}}}\n)*", joined) is not None)


def _old_negative(event: AnyEvent) -> bool:
    return (type(event) is Metric and event.value < 0
            and (event.name in NON_NEGATIVE_METRICS or event.unit in NON_NEGATIVE_UNITS))


def _old_fits(rule: SubjectRule, event: AnyEvent) -> bool:
    return kind_of(event) == rule.kind and (rule.rollout is None or event.rollout == rule.rollout)


def _reference_lenient(data: bytes) -> tuple[list[AnyEvent], list[Rejected]]:
    """``decode_lenient`` for a batch, with the old fast-path test (item by item otherwise)."""
    try:
        events = _many.decode(data)
        if len(events) <= MAX_BATCH and _old_ids_ok(events) and not any(map(_old_negative, events)):
            return events, []
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    good: list[AnyEvent] = []
    bad: list[Rejected] = []
    for index, raw in enumerate(_raw_items.decode(data)):
        try:
            good.append(decode(bytes(raw)))
        except EventError as exc:
            bad.append(Rejected(index, exc, bytes(raw)))
    return good, bad


def reference_from_log(subject: str, data: bytes) -> tuple[list[AnyEvent], list[Rejected]]:
    """``decode_from_log`` with one Python call per event for the subject rule."""
    rule = rule_of(subject)
    if isinstance(rule, EventError):
        return [], [Rejected(-1, rule, data)]
    events, rejected = _reference_lenient(data) if _is_array(data) else decode_lenient(data)
    if all(_old_fits(rule, e) for e in events):
        return events, rejected
    taken = {r.index for r in rejected}
    places = (i for i in itertools.count() if i not in taken)
    good: list[AnyEvent] = []
    bad = list(rejected)
    for event in events:
        place = -1 if not _is_array(data) else next(places)
        error = rule.check(event)
        assert (error is None) == _old_fits(rule, event), (rule.subject, event)
        if error is None:
            good.append(event)
        else:
            bad.append(Rejected(place, error, encode(event)))
    bad.sort(key=lambda r: r.index)
    return good, bad


# --- random batches ------------------------------------------------------------------------
BASE = {"rollout": "r1", "time_ms": 1_000, "producer": "svc"}
STATE = ControlState(canary_pct=50.0)
TEMPLATES: list[Event] = [
    Metric(id="m1", variant="candidate", name="latency_ms", value=5.0, **BASE),
    Decision(id="d1", unit="u1", variant="candidate", reason="canary", canary_pct=50.0, config_version=1,
             propensity=0.5, **BASE),
    Outcome(id="o1", decision_id="d1", variant="candidate", verdict="win", **BASE),
    KillSwitch(id="k1", actor="rollback", reason="forged", before=STATE, after=STATE, **BASE),
    Tick(id="t1", time_ms=4_102_444_800_000, producer="engine"),
]
GOOD_IDS = st.sampled_from(["a", "r1", "bench-3", "A_z-9", "x" * 64, "0190a1b2c3d4e5f6a7b8c9d0e1f2"])
BAD_IDS = st.sampled_from(["", "x" * 65, "a.b", "a b", "é", "a\n", "\nb", "a\nb", "\n", "a*", ">", "a\x00", "r1\n"])
IDS = st.one_of(GOOD_IDS, GOOD_IDS, GOOD_IDS, BAD_IDS)
VALUES = st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1.0, -1e-300, math.nan, -math.nan, math.inf, -math.inf, -1e13]),
                   st.floats(allow_nan=True, allow_infinity=True))
NAMES = st.sampled_from([*sorted(NON_NEGATIVE_METRICS), "delta", "score", "lat.ency"])
UNITS = st.sampled_from([*sorted(NON_NEGATIVE_UNITS), "1", "pct", "ms\n"])
SUBJECTS = st.sampled_from(["ro.evt.r1.metric", "ro.evt.r1.decision", "ro.evt.r1.outcome", "ro.evt.r2.metric",
                            "ro.evt.r1.metric.3", "ro.ctl.r1.kill_switch", "ro.tick", "ro.evt.r1.metric.x",
                            "ro.evt.r1.tick"])


@st.composite
def events(draw: st.DrawFn) -> Any:
    template = draw(st.sampled_from(TEMPLATES[:3] * 3 + TEMPLATES[3:]))
    changes: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        changes["rollout"] = draw(st.sampled_from(["r2", "_engine"]) | IDS)
    for name in itertools.chain(*_ID_FIELDS[type(template)]):
        if name != "rollout" and draw(st.integers(0, 5)) == 0:
            changes[name] = draw(IDS | st.none())
    if type(template) is Metric:
        changes.update(value=draw(VALUES), name=draw(NAMES), unit=draw(UNITS))
    if draw(st.integers(0, 20)) == 0:
        return {"kind": kind_of(template), "id": "broken"}  # an item that does not decode
    return msgspec.structs.replace(template, **changes)


def _one_type(items: list[Any]) -> list[Any]:
    """Most batches on the wire are of one kind: make about half of them so."""
    return [i for i in items if type(i) is type(items[0])] if items else items


BATCHES = st.lists(events(), max_size=8).flatmap(lambda items: st.sampled_from([items, _one_type(items)]))


def _key(result: tuple[list[AnyEvent], list[Rejected]]) -> tuple[list[bytes], list[tuple[int, str, bytes]]]:
    good, bad = result
    return [encode(e) for e in good], [(r.index, r.reason, r.data) for r in bad]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(SUBJECTS, BATCHES)
def test_batches_decode_from_the_log_as_the_per_event_rules_decide(subject: str, batch: list[Any]) -> None:
    data = msgspec.msgpack.encode(batch)
    assert _key(decode_from_log(subject, data)) == _key(reference_from_log(subject, data))
    try:
        decoded = _many.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    # the old id check said no to an empty batch (its joined "\n" counted one newline for no
    # value), which sent it item by item to the same ([], []): the results above agree
    old_ok = _old_ids_ok(decoded) and not any(map(_old_negative, decoded))
    assert batch_ok(decoded) == (old_ok or not decoded)
    rule = rule_of(subject)
    if isinstance(rule, SubjectRule):
        assert rule.all_ok(decoded) == all(_old_fits(rule, e) for e in decoded)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(SUBJECTS, events())
def test_single_events_decode_from_the_log_as_the_per_event_rules_decide(subject: str, event: Any) -> None:
    data = msgspec.msgpack.encode(event)
    assert _key(decode_from_log(subject, data)) == _key(reference_from_log(subject, data))


@settings(max_examples=300)
@given(VALUES, NAMES, UNITS)
def test_the_value_rule_is_value_below_zero_of_a_concerned_name_or_unit(value: float, name: str, unit: str) -> None:
    metric = msgspec.structs.replace(TEMPLATES[0], value=value, name=name, unit=unit)  # not validated: NaN stays
    refused = False
    try:
        check_values(metric)
    except EventError:
        refused = True
    assert refused == _old_negative(metric) == bool(negative_metrics([metric]))
    if _old_ids_ok([metric]):
        assert batch_ok([metric, TEMPLATES[0], metric]) == (not refused)


def test_the_fast_id_check_reads_the_token_rule_and_msgspec_bounds_the_length() -> None:
    assert _TOKEN_BYTES == b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
    assert all(re.match(TOKEN_PATTERN, chr(c)) is None for c in range(128, 0x3000))
    meta = Id.__metadata__[0]
    assert (meta.min_length, meta.max_length) == (1, TOKEN_MAX)


def test_the_bench_shapes_take_the_fast_path() -> None:
    metrics = [msgspec.structs.replace(TEMPLATES[0], id=f"m{i}", value=float(i)) for i in range(100)]
    assert batch_ok(metrics) and batch_ok([]) and batch_ok(TEMPLATES)
    rule = rule_of("ro.evt.r1.metric")
    assert isinstance(rule, SubjectRule) and rule.all_ok(metrics) and rule.all_ok([])
    assert not rule.all_ok([*metrics, TEMPLATES[1]])
    assert not rule.all_ok([*metrics, msgspec.structs.replace(TEMPLATES[0], rollout="r2")])
