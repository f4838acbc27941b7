"""Window building blocks for canary stats: one series of samples over three windows.

A :class:`Series` holds the samples of one metric (or of ``quality``) of one variant:

- ``all``: count, Welford mean and variance, and a DDSketch for quantiles. The sketch is
  created lazily, only once the series outgrows the last-N ring (until then the ring
  *is* every sample and quantiles are exact), so thousands of small rollouts cost
  a few hundred bytes each instead of six sketches each.
- ``last_n``: a ring of the last N values (an ``array('d')`` and a write position:
  8 bytes a sample, no per-sample Python objects, no deque blocks).
- ``time``: parallel arrays of event times and values, capped at ``time_cap`` entries;
  expired entries are dropped from the head when the series is touched, and readers
  filter by the cut-off so the window is exact whenever it is read.

Everything here is deterministic (no clock, no randomness) and encodes canonically:
rings are written oldest-first and sketches as sorted sparse bins, so a fold restored
from a snapshot continues byte-for-byte like one that never stopped.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence

import msgspec
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

__all__ = [
    "SKETCH_ACCURACY",
    "Series",
    "SeriesState",
    "SketchState",
    "pack",
    "quantile",
    "ring_items",
    "ring_push",
    "trim_time",
    "unpack",
]

SKETCH_ACCURACY = 0.01
"""Relative accuracy of every sketch: a reported p95 is within 1% of the true value."""

_MAPPING = LogarithmicMapping(SKETCH_ACCURACY)  # immutable, shared by every sketch


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


# --- rings and time lists ----------------------------------------------------------------
def pack(values: array) -> bytes:
    """An array's bytes, little-endian whatever the machine (canonical snapshots)."""
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def unpack(typecode: str, data: bytes) -> array:
    """Inverse of :func:`pack`."""
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


def ring_push(ring: list | array, pos: int, value: object, size: int) -> tuple[object, int]:
    """Write ``value`` into a ring of ``size``; return (the value it replaced or None, new pos)."""
    if len(ring) < size:
        ring.append(value)
        return None, pos
    old = ring[pos]
    ring[pos] = value
    pos += 1
    return old, (0 if pos == size else pos)


def ring_items(ring: list | array, pos: int) -> list | array:
    """The ring's values oldest first (a copy of the same type)."""
    return ring[pos:] + ring[:pos] if pos else ring[:]


def trim_time(times: array, cutoff: int, cap: int, *others: list | array) -> None:
    """Drop expired head entries (time <= cutoff) and, at the cap, the oldest eighth.

    Only the head is trimmed (arrival order), so an out-of-order early entry behind a
    later one stays until the later one expires; readers filter by time anyway.
    """
    k = 0
    n = len(times)
    while k < n and times[k] <= cutoff:
        k += 1
    if n - k >= cap:
        k = max(k, n - cap + max(1, cap // 8))
    if k:
        del times[:k]
        for other in others:
            del other[:k]


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def mean_var(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Two-pass mean and sample variance (exact for the bounded windows)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.fsum((x - mean) ** 2 for x in values) / (n - 1)


class SeriesState(msgspec.Struct, array_like=True, gc=False):
    """Canonical encoding of a :class:`Series`."""

    n: int
    mean: float
    m2: float
    last: bytes
    times: bytes
    values: bytes
    sketch: SketchState | None = None


class Series:
    """One variant's samples of one metric over the all / last-N / time windows."""

    __slots__ = ("last", "lpos", "m2", "mean", "n", "sketch", "times", "values")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.sketch: BaseDDSketch | None = None
        self.last = array("d")
        self.lpos = 0
        self.times = array("q")
        self.values = array("d")

    def push(self, value: float, time_ms: int, cutoff: int, last_n: int, cap: int) -> None:
        """Add one sample at event time ``time_ms``; ``cutoff`` is now - window."""
        n = self.n = self.n + 1
        delta = value - self.mean
        self.mean += delta / n
        self.m2 += delta * (value - self.mean)
        sketch = self.sketch
        if sketch is not None:
            sketch.add(value)
        elif n > last_n:  # outgrew the ring: from now on the sketch carries "all"
            sketch = self.sketch = new_sketch()
            for old in ring_items(self.last, self.lpos):
                sketch.add(old)
            sketch.add(value)
        last = self.last
        if len(last) < last_n:
            last.append(value)
        else:
            pos = self.lpos
            last[pos] = value
            pos += 1
            self.lpos = 0 if pos == last_n else pos
        if time_ms > cutoff:
            times = self.times
            if times and (times[0] <= cutoff or len(times) >= cap):
                trim_time(times, cutoff, cap, self.values)
            times.append(time_ms)
            self.values.append(value)

    # --- reads -------------------------------------------------------------------------
    def window_values(self, window: str, cutoff: int) -> list[float]:
        """Raw values of a bounded window (``all`` gives the last-N ring once it overflowed)."""
        if window == "time":
            return [v for t, v in zip(self.times, self.values, strict=True) if t > cutoff]
        return ring_items(self.last, self.lpos).tolist()  # type: ignore[union-attr]

    def summary(self, window: str, cutoff: int) -> tuple[int, float | None, float | None, tuple[float, float, float] | None]:
        """(n, mean, variance, (p50, p95, p99)) of one window."""
        if window == "all" and self.sketch is not None:
            var = self.m2 / (self.n - 1) if self.n > 1 else None
            s = self.sketch
            qs = (s.get_quantile_value(0.5), s.get_quantile_value(0.95), s.get_quantile_value(0.99))
            return self.n, self.mean, var, qs  # type: ignore[return-value]
        values = self.window_values(window, cutoff)
        if window == "all":
            n, mean = self.n, (self.mean if self.n else None)
            var = self.m2 / (n - 1) if n > 1 else None
        else:
            n = len(values)
            mean, var = mean_var(values)
        if not values:
            return n, mean, var, None
        ordered = sorted(values)
        return n, mean, var, (quantile(ordered, 0.5), quantile(ordered, 0.95), quantile(ordered, 0.99))

    # --- snapshot ----------------------------------------------------------------------
    def state(self) -> SeriesState:
        sketch = None if self.sketch is None else sketch_state(self.sketch)
        return SeriesState(self.n, self.mean, self.m2, pack(ring_items(self.last, self.lpos)),  # type: ignore[arg-type]
                           pack(self.times), pack(self.values), sketch)

    @classmethod
    def from_state(cls, state: SeriesState) -> Series:
        series = cls()
        series.n, series.mean, series.m2 = state.n, state.mean, state.m2
        series.last = unpack("d", state.last)
        series.times = unpack("q", state.times)
        series.values = unpack("d", state.values)
        series.sketch = None if state.sketch is None else sketch_from(state.sketch)
        return series
