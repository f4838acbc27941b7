"""Window building blocks for canary stats: one series of samples over three windows.

A :class:`Series` holds the samples of one metric (or of ``quality``) of one variant:

- ``all``: count, Welford mean and variance, and a DDSketch for quantiles
  (``consumers/sketches.py``). The sketch is created lazily, only once the series
  outgrows the last-N ring (until then the ring *is* every sample and quantiles are
  exact), so thousands of small rollouts cost a few hundred bytes each instead of six
  sketches each; a fold whose readers want no percentile of every sample makes none.
- ``last_n`` and ``time`` share ONE chronological buffer: parallel arrays of event
  times and values (16 bytes a sample, no per-sample Python objects). ``last_n`` is
  its last N entries; ``time`` the entries newer than the cut-off. A head entry is
  dropped once it is neither among the last N nor in the time window (or the buffer
  reaches ``cap``), when the series is touched; readers filter by the cut-off, so
  the window is exact whenever it is read.
- A third parallel array holds each sample's stream sequence (8 bytes a sample): a kill
  switch names the events whose samples were in its judged windows
  (:meth:`Series.window_entries`, ``consumers/rollback/proof.py``).

Everything here is deterministic (no clock, no randomness) and encodes canonically:
rings are written oldest-first and sketches as sorted sparse bins, so a fold restored
from a snapshot continues byte-for-byte like one that never stopped.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import Counter
from collections.abc import Sequence

import msgspec
from ddsketch.ddsketch import BaseDDSketch

from rollout_engine.consumers.aggregates import WindowAggregates, finite
from rollout_engine.consumers.sketches import (
    Histogram,
    SketchState,
    new_sketch,
    sketch_add,
    sketch_from,
    sketch_quantile,
    sketch_state,
    store_bins,
    value_bin,
)

__all__ = [
    "Series",
    "SeriesState",
    "pack",
    "quantile",
    "trim",
    "unpack",
]

# --- buffers -------------------------------------------------------------------------------
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


def trim(times: array, cutoff: int, keep: int, cap: int, *others: array) -> None:
    """Drop head entries that are expired (time <= cutoff) or over ``cap``, but never
    any of the newest ``keep`` (the last-N window). ``others`` are parallel arrays.

    Only the head is trimmed (arrival order), so an out-of-order early entry behind a
    later one stays until the later one goes; readers filter by time anyway. At the
    cap the oldest eighth goes at once, so trimming costs O(1) amortized.
    """
    size = len(times)
    limit = size - keep
    if limit <= 0:
        return
    k = 0
    while k < limit and times[k] <= cutoff:
        k += 1
    if size - k >= cap:
        k = max(k, min(limit, size - cap + max(1, cap // 8)))
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
    times: bytes
    values: bytes
    sketch: SketchState | None = None
    seqs: bytes = b""  # stream sequence of each buffered sample (appended: older snapshots have none)


class Series:
    """One variant's samples of one metric over the all / last-N / time windows."""

    __slots__ = ("agg", "m2", "mean", "n", "seqs", "sketch", "times", "values")

    def __init__(self) -> None:
        self.agg: WindowAggregates | None = None  # derived, made on the first read (consumers/aggregates.py)
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.sketch: BaseDDSketch | None = None
        self.times = array("q")
        self.values = array("d")
        self.seqs = array("q")

    def push(self, value: float, time_ms: int, cutoff: int, last_n: int, cap: int, seq: int = 0,
             sketched: bool = True) -> None:
        """Add one sample at event time ``time_ms`` from the message at stream sequence ``seq``;
        ``cutoff`` is now - window; ``cap`` >= ``last_n``. ``sketched=False``: no sketch of
        every sample (its percentiles and histogram are then refused once the ring has
        dropped a sample; count, mean and variance of every sample are kept either way)."""
        n = self.n = self.n + 1
        delta = value - self.mean
        self.mean += delta / n
        self.m2 += delta * (value - self.mean)
        sketch = self.sketch
        times, values = self.times, self.values
        if sketch is not None:
            sketch_add(sketch, value)
        elif n > last_n and sketched:  # outgrew the last-N buffer: from now on the sketch carries "all"
            sketch = self.sketch = new_sketch()
            for old in values[-last_n:]:  # every earlier sample: none was dropped yet
                sketch_add(sketch, old)
            sketch_add(sketch, value)
        size = len(times)
        agg = self.agg
        if agg is not None:  # a reader follows the last-N window: keep its aggregates current
            if agg.last_n != last_n or value - value != 0.0:
                self.agg = None  # read with another N, or a non-finite value: readers recompute
            else:
                agg.slide(values[-last_n] if size >= last_n else None, value)
        if size >= last_n and (times[0] <= cutoff or size >= cap):
            if size == last_n:  # trim() would drop exactly the oldest: skip the call (hot when cap == last_n)
                del times[0], values[0], self.seqs[0]
            else:
                trim(times, cutoff, last_n - 1, cap, values, self.seqs)
        times.append(time_ms)
        values.append(value)
        self.seqs.append(seq)

    # --- reads -------------------------------------------------------------------------
    def variance(self) -> float | None:
        """Sample variance of every sample (Welford), None below two samples."""
        return self.m2 / (self.n - 1) if self.n > 1 else None

    def all_quantile(self, q: float) -> float | None:
        """Quantile ``q`` of every sample: exact while the ring holds them all, then the sketch's."""
        if self.sketch is not None:
            return sketch_quantile(self.sketch, q)
        if not self.values:
            return None
        self._check_every_sample()
        agg = self.agg
        if agg is not None and len(self.values) <= agg.last_n:  # its sorted last N are every sample
            return quantile(agg.ordered, q)
        return quantile(sorted(self.values), q)

    def _check_every_sample(self) -> None:
        """Refuse to answer for every sample from the ring alone once it dropped some: a
        series pushed with ``sketched=False`` has no sketch to answer from."""
        if self.n > len(self.values):
            raise RuntimeError(f"this series keeps no sketch of every sample ({self.n} samples, {len(self.values)} "
                               "in its ring): its fold was made for a policy that reads no percentile of the 'all' "
                               "window and no rank test (consumers/rollback/evidence.py stats_shape)")

    def aggregates(self, last_n: int) -> WindowAggregates | None:
        """The last-N window's incremental aggregates, made on the first call and kept
        current by :meth:`push` from then on; None while a value in it is not finite."""
        agg = self.agg
        if agg is None or agg.last_n != last_n:
            if not finite(self.values[-last_n:]):
                return None
            agg = self.agg = WindowAggregates(self.values, last_n)
        return agg

    def histogram(self) -> Histogram:
        """Every sample, binned at the sketch's accuracy: read from the sketch once there is
        one, else the ring's values (then every sample) binned the same way."""
        sketch = self.sketch
        if sketch is None:
            self._check_every_sample()
            return sorted(Counter(value_bin(v) for v in self.values).items())
        out = store_bins(sketch._negative_store, -1)[::-1]
        if sketch._zero_count:
            out.append((0, sketch._zero_count))
        out += store_bins(sketch._store, 1)
        return out

    def window_values(self, window: str, cutoff: int, last_n: int) -> list[float]:
        """Raw values of a bounded window, oldest first (``all``: the last N)."""
        if window == "time":
            return [v for t, v in zip(self.times, self.values, strict=True) if t > cutoff]
        return self.values[-last_n:].tolist()

    def window_entries(self, window: str, cutoff: int, last_n: int) -> list[tuple[int, float]]:
        """``(stream seq, value)`` of each sample of a bounded window, oldest first
        (``all``: the last N): which events a judgement read (read only when a kill is made)."""
        if window == "time":
            return [(s, v) for t, s, v in zip(self.times, self.seqs, self.values, strict=True) if t > cutoff]
        return list(zip(self.seqs[-last_n:], self.values[-last_n:], strict=True))

    def summary(self, window: str, cutoff: int, last_n: int) -> tuple[int, float | None, float | None, tuple[float, float, float] | None]:
        """(n, mean, variance, (p50, p95, p99)) of one window."""
        if window == "all" and self.sketch is not None:
            var = self.m2 / (self.n - 1) if self.n > 1 else None
            s = self.sketch
            qs = (s.get_quantile_value(0.5), s.get_quantile_value(0.95), s.get_quantile_value(0.99))
            return self.n, self.mean, var, qs  # type: ignore[return-value]
        values = self.window_values(window, cutoff, last_n)
        if window == "all":
            n, mean = self.n, (self.mean if self.n else None)
            var = self.m2 / (n - 1) if n > 1 else None
            if n > len(self.values):  # no sketch (pushed with sketched=False) and the ring dropped some
                return n, mean, var, None
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
        return SeriesState(self.n, self.mean, self.m2, pack(self.times), pack(self.values), sketch,
                           pack(self.seqs))

    @classmethod
    def from_state(cls, state: SeriesState) -> Series:
        series = cls()
        series.n, series.mean, series.m2 = state.n, state.mean, state.m2
        series.times = unpack("q", state.times)
        series.values = unpack("d", state.values)
        series.seqs = unpack("q", state.seqs) if state.seqs else array("q", bytes(8 * len(series.times)))
        series.sketch = None if state.sketch is None else sketch_from(state.sketch)
        return series
