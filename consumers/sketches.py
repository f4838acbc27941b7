"""Sketches of every sample: DDSketch at 1% relative accuracy, made cheap for a hot fold.

The ``all`` window of a series (``consumers.windows.Series``) answers percentiles and the
rank test's histogram from one sketch. Everything here is ddsketch's own arithmetic, in
its order, with the common cases inlined (a fold pushes a sample per event), and encodes
canonically as sorted sparse bins, so a restored sketch continues bit for bit.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate

import msgspec
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

__all__ = [
    "SKETCH_ACCURACY",
    "Histogram",
    "SketchState",
    "new_sketch",
    "sketch_add",
    "sketch_from",
    "sketch_quantile",
    "sketch_state",
    "store_bins",
    "value_bin",
]

SKETCH_ACCURACY = 0.01
"""Relative accuracy of every sketch: a reported p95 is within 1% of the true value."""

_MAPPING = LogarithmicMapping(SKETCH_ACCURACY)  # immutable, shared by every sketch


_MIN_POSITIVE = _MAPPING.min_possible
_MULTIPLIER = _MAPPING._multiplier
_KEY_OFFSET = _MAPPING._offset
_log = math.log
_LN2 = math.log(2.0)
"""``math.log(x, 2)`` is ``math.log(x) / math.log(2.0)`` in CPython, the same two IEEE
operations: dividing by the constant gives ddsketch's key bit for bit without computing
log(2) again for every sample (0.27 against 0.21 us here)."""
_ceil = math.ceil


def sketch_add(sketch: BaseDDSketch, value: float) -> None:
    """``sketch.add(value)``, with the common cases inlined (profiled: ddsketch's add goes
    through four Python calls, ~1 us; a push of a positive value into an existing bin
    range is a third of that, and a zero -- 98% of an ``error`` series -- less). The
    arithmetic is ddsketch's own, in its order, so the sketch -- and every snapshot -- is
    bit-identical; a negative value (or NaN) takes ddsketch's path.
    """
    if value > _MIN_POSITIVE:
        store = sketch._store
        key = int(_ceil(_log(value) / _LN2 * _MULTIPLIER) + _KEY_OFFSET)
        if store.min_key <= key <= store.max_key:
            store.bins[key - store.offset] += 1.0
            store.count += 1.0
        else:
            store.add(key, 1.0)
    elif value >= -_MIN_POSITIVE:  # ddsketch's zero bucket
        sketch._zero_count += 1.0
    else:
        sketch.add(value)
        return
    sketch._count += 1.0
    sketch._sum += value * 1.0
    if value < sketch._min:
        sketch._min = value
    if value > sketch._max:
        sketch._max = value


def sketch_quantile(sketch: BaseDDSketch, q: float) -> float | None:
    """``sketch.get_quantile_value(q)``, the same float, without a Python loop over the bins
    (the ddsketch loop costs ~15 us on a latency sketch; guards on the ``all`` window read
    a percentile on every sample). Same running sums in the same order, so bit-identical.
    """
    count = sketch._count
    if count == 0:
        return None
    rank = q * (count - 1)
    negative = sketch._negative_store.count
    if rank < negative:  # negative values: rare, take ddsketch's own path
        return sketch.get_quantile_value(q)  # type: ignore[no-any-return]
    if rank < sketch._zero_count + negative:
        return 0.0
    store = sketch._store
    cumulative = list(accumulate(store.bins))
    i = bisect_right(cumulative, rank - sketch._zero_count - negative)
    key = i + store.offset if i < len(cumulative) else store.max_key
    return _MAPPING.value(key)  # type: ignore[no-any-return]


Histogram = list[tuple[int, float]]
"""Sorted ``(bin, count)`` pairs: a series binned at the sketch's 1% relative accuracy.

Bins of negative values sort first, then zero (bin 0), then positive values, so two
histograms merge into one ranking (the rank test's input)."""

_BIN_SHIFT = 100_000  # above any |key| of a finite double (about 35,500)


def value_bin(value: float) -> int:
    """The histogram bin of one value: its sketch key, shifted by its sign class."""
    if value > _MIN_POSITIVE:
        return int(_ceil(_log(value) / _LN2 * _MULTIPLIER) + _KEY_OFFSET) + _BIN_SHIFT
    if value < -_MIN_POSITIVE:
        return -(int(_ceil(_log(-value) / _LN2 * _MULTIPLIER) + _KEY_OFFSET) + _BIN_SHIFT)
    return 0


def store_bins(store: DenseStore, sign: int) -> list[tuple[int, float]]:
    """The non-empty bins of one side of a sketch as histogram bins (``sign`` -1 or 1)."""
    offset = store.offset
    return [(sign * (i + offset + _BIN_SHIFT), c) for i, c in enumerate(store.bins) if c]


def new_sketch() -> BaseDDSketch:
    """An empty DDSketch sharing the one mapping object (saves ~1 KB per sketch)."""
    return BaseDDSketch(mapping=_MAPPING, store=DenseStore(), negative_store=DenseStore(), zero_count=0.0)


class SketchState(msgspec.Struct, array_like=True, gc=False):
    """A DDSketch as sorted sparse bins: independent of how its dense store grew."""

    zero: float
    count: float
    min: float
    max: float
    sum: float
    pos: list[tuple[int, float]]
    neg: list[tuple[int, float]]


def _bins(store: DenseStore) -> list[tuple[int, float]]:
    offset = store.offset
    return [(i + offset, c) for i, c in enumerate(store.bins) if c]


def sketch_state(sketch: BaseDDSketch) -> SketchState:
    return SketchState(sketch._zero_count, sketch._count, sketch._min, sketch._max, sketch._sum,
                       _bins(sketch._store), _bins(sketch._negative_store))


def sketch_from(state: SketchState) -> BaseDDSketch:
    sketch = new_sketch()
    for key, count in state.pos:
        sketch._store.add(key, count)
    for key, count in state.neg:
        sketch._negative_store.add(key, count)
    sketch._zero_count = state.zero
    sketch._count = state.count
    sketch._min, sketch._max, sketch._sum = state.min, state.max, state.sum
    return sketch
