"""The contract's rules that msgspec's types do not check: Id fields, non-negative values.

Two rules, each written once and read by two callers:

- every field typed :data:`events.schema.Id` is a token (subject-safe, 1-64 characters);
- a metric named in :data:`NON_NEGATIVE_METRICS` or with a unit in
  :data:`NON_NEGATIVE_UNITS` is never below 0.

:func:`check_ids` and :func:`check_values` check one event and raise the precise error
(the SDK's ``validate``, the codec's item-by-item path). :func:`batch_ok` answers yes or no
for a whole decoded batch at C speed (``map`` over the fields of events grouped by type,
one ``bytes.translate`` over every Id value), so a consumer pays no Python call per event for a good
batch; a no sends the batch to the item-by-item path, which names what is wrong.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Sequence

import msgspec

from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import TOKEN_PATTERN
from rollout_engine.events.schema import EVENT_TYPES, AnyEvent, Event, Id, Metric

__all__ = [
    "NON_NEGATIVE_METRICS",
    "NON_NEGATIVE_UNITS",
    "batch_ok",
    "check_ids",
    "check_values",
    "negative_metrics",
]


# --- ids: one C pass per message instead of one regex call per field ---------------------
def _id_fields(cls: type[Event]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) names of the fields of ``cls`` typed :data:`events.schema.Id`."""
    required: list[str] = []
    optional: list[str] = []
    for field in msgspec.structs.fields(cls):
        if field.type == Id:
            required.append(field.name)
        elif field.type == (Id | None):
            optional.append(field.name)
    return tuple(required), tuple(optional)


_ID_FIELDS = {cls: _id_fields(cls) for cls in EVENT_TYPES}
_ID_GETTERS = {cls: (tuple(map(operator.attrgetter, req)), tuple(map(operator.attrgetter, opt)))
               for cls, (req, opt) in _ID_FIELDS.items()}
_ONE_ID = re.compile(TOKEN_PATTERN)
_TOKEN_BYTES = bytes(c for c in range(128) if _ONE_ID.match(chr(c)))
"""The characters :data:`TOKEN_PATTERN` allows, read from it (it allows no other than ASCII)."""
_NOT_NONE = functools.partial(operator.is_not, None)


def _by_type(events: Sequence[AnyEvent]) -> dict[type, Sequence[AnyEvent]]:
    """``events`` grouped by type; a batch of one type (the rule of a subject) is not copied."""
    types = set(map(type, events))
    if len(types) <= 1:
        return dict.fromkeys(types, events)
    groups: dict[type, list[AnyEvent]] = {cls: [] for cls in types}
    for event in events:
        groups[type(event)].append(event)
    return groups  # type: ignore[return-value]


def _ids_ok(groups: dict[type, Sequence[AnyEvent]]) -> bool:
    """True when every Id field of every decoded event matches :data:`TOKEN_PATTERN`.

    msgspec has checked each Id's length (1-64, ``events.fields.Id``) while decoding, so
    what is left is the characters: all the values joined, every character one of
    :data:`_TOKEN_BYTES` (``bytes.translate`` deletes those and must leave nothing).
    """
    values: list[str] = []
    for cls, group in groups.items():
        required, optional = _ID_GETTERS[cls]
        for get in required:
            values.extend(map(get, group))
        for get in optional:
            values.extend(filter(_NOT_NONE, map(get, group)))
    joined = "".join(values)
    return joined.isascii() and not joined.encode("ascii").translate(None, _TOKEN_BYTES)


def check_ids(event: AnyEvent) -> None:
    """Raise :class:`EventError` naming the first Id field of ``event`` that is not a token."""
    required, optional = _ID_FIELDS[type(event)]
    for name in (*required, *optional):
        value = getattr(event, name)
        if value is not None and not _ONE_ID.match(value):
            raise EventError(
                f"$.{name}",
                f"Expected `str` matching regex {TOKEN_PATTERN!r}, got {value[:80]!r}",
                "ids are 1-64 characters of A-Z a-z 0-9 _ - (they become NATS subject tokens)",
            )


# --- values a type cannot express ------------------------------------------------------
NON_NEGATIVE_METRICS = frozenset({"latency_ms", "cost_cents", "error"})
"""Metric names that are durations, amounts or 0/1 flags: a negative value is a bug."""
NON_NEGATIVE_UNITS = frozenset({"ms", "s", "us", "ns", "cents", "bytes", "count"})
"""Units of durations, amounts and counts: a negative value is a bug (and would hide a regression)."""

_VALUE = operator.attrgetter("value")
_BELOW_ZERO = (0.0).__gt__
"""``value < 0`` as a C call: False for -0.0 and NaN, as ``<`` is."""


def negative_metrics(metrics: Sequence[Metric]) -> list[Metric]:
    """The metrics of ``metrics`` whose value breaks the rule: below 0 with a name in
    :data:`NON_NEGATIVE_METRICS` or a unit in :data:`NON_NEGATIVE_UNITS`.

    The one statement of the rule, for one event and for a batch: values below 0 are
    picked at C speed, and only those few have their name and unit looked at.
    """
    below = itertools.compress(metrics, map(_BELOW_ZERO, map(_VALUE, metrics)))
    return [m for m in below if m.name in NON_NEGATIVE_METRICS or m.unit in NON_NEGATIVE_UNITS]


def check_values(event: AnyEvent) -> None:
    """Raise :class:`EventError` when ``event`` is a metric that breaks :func:`negative_metrics`."""
    if type(event) is Metric and negative_metrics((event,)):
        raise EventError(
            "$.value",
            f"metric {event.name!r} (unit {event.unit!r}) is {event.value!r}; durations, amounts and counts are >= 0",
            f"negative values of {sorted(NON_NEGATIVE_METRICS)} or units {sorted(NON_NEGATIVE_UNITS)} are refused",
        )


def batch_ok(events: Sequence[AnyEvent]) -> bool:
    """True when no event of ``events`` breaks :func:`check_ids` or :func:`check_values`.

    For events msgspec decoded (it bounds each Id's length; built events go through
    ``events.codec.validate``). A batch check at C speed in the common case (one type, good ids, no negative
    value); False says only that the item-by-item path must find the culprits.
    """
    groups = _by_type(events)
    metrics = groups.get(Metric)
    return _ids_ok(groups) and not (metrics and negative_metrics(metrics))  # type: ignore[arg-type]
