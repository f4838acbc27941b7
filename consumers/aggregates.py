"""Window aggregates kept up to date sample by sample, for guards that read every sample.

The rollback consumer judges a guard on every sample of its metric, and each judgement
reads a window's mean or percentile. Recomputing them (copy the last N values, ``fsum``,
sort) cost most of its fold. A :class:`WindowAggregates` is attached to a
:class:`consumers.windows.Series` on its first read and from then on follows its pushes:

- the last N values in sorted order (``bisect.insort`` in, ``bisect_left`` + ``del``
  out: O(log N) search and an O(N) memmove, 0.5-1.2 us a sample at N = 100 on the
  shared bench host, where a copy and sort cost 4-10 us), so a percentile is two reads.
  They are an ``array('d')``, 8 bytes a value: a list of floats is 32 (a pointer and a
  float object), 3.2 KB against 0.9 KB per guarded series of 100, which for a rollback
  consumer of 10,000 rollouts with four guarded series each is 128 MB against 35 MB;
  the array's bisection boxes each probe, about 0.3 us a sample more;
- their sum, *exact*: a Python integer in units of 2**-scale, where ``scale`` is the
  most fractional bits any value of the window has needed (never more than 1,074). A
  float sum would drift from the ``math.fsum`` the windows used before; the integer
  does not, and ``exact / 2**scale`` is correctly rounded, as ``fsum`` is, so the mean
  is the same float to the last bit (tests/unit/test_window_aggregates.py checks it);
- the time window as a cached value list, keyed by the series' sample count and the
  cut-off: the time window's members change with ticks and out-of-order event times,
  so it is rebuilt when either moved, and reused by every read in between (a relative
  guard reads the baseline's window on every candidate sample).

Nothing here is persisted: it is derived from the series' buffer, rebuilt on the first
read after a restore, so snapshots are byte-for-byte what they were. A non-finite value
(never produced by the schema, which bounds values to |x| <= 1e12) switches the
aggregates off until it has left the window; readers then recompute, as before.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Any

__all__ = ["WindowAggregates", "finite"]


def finite(values: Sequence[float]) -> bool:
    """True when no value is NaN or infinite (the sorted list and the exact sum need it)."""
    return all(v - v == 0.0 for v in values)


class WindowAggregates:
    """Sorted values and exact sum of a series' last ``last_n`` values, plus a time-window cache.

    ``time_key`` is ``(sample count, cut-off)`` of ``time_cached``, an object the reader
    owns (the rollback evidence keeps its lazy summary there)."""

    __slots__ = ("exact", "last_n", "mean_cached", "ordered", "scale", "time_cached", "time_key")

    def __init__(self, values: array, last_n: int) -> None:
        window = values[-last_n:].tolist()
        self.last_n = last_n
        self.ordered = array("d", sorted(window))
        self.exact = 0
        self.scale = 0
        for value in window:
            self._add(value)
        self.time_key: tuple[int, int] = (-1, 0)
        self.time_cached: Any = None
        self.mean_cached: float | None = None

    def _add(self, value: float) -> None:
        num, den = value.as_integer_ratio()
        shift = den.bit_length() - 1  # den is a power of two
        scale = self.scale
        if shift > scale:  # more fractional bits than any value so far: rescale the sum
            self.exact <<= shift - scale
            self.scale = scale = shift
        self.exact += num << (scale - shift)

    def slide(self, leaving: float | None, value: float) -> None:
        """``value`` joins the last-N window; ``leaving`` (the oldest of it, None while
        the window is not full) leaves. Ties keep arrival order, as ``sorted`` does."""
        ordered = self.ordered
        self.mean_cached = None
        if leaving is not None:
            del ordered[bisect_left(ordered, leaving)]  # the oldest of its equals: the first of them
            num, den = leaving.as_integer_ratio()
            self.exact -= num << (self.scale - den.bit_length() + 1)
        insort(ordered, value)  # after its equals: arrival order among ties
        self._add(value)

    def mean(self) -> float:
        """Mean of the last-N window (not empty): ``math.fsum(window) / n``, bit for bit.

        Kept until the window moves: a relative guard reads the baseline's mean on every
        candidate sample, and the division of two 60-bit integers is the slow one."""
        mean = self.mean_cached
        if mean is None:
            mean = self.mean_cached = self.exact / (1 << self.scale) / len(self.ordered)
        return mean
