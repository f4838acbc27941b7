"""Canary stats: the pure fold of decisions, outcomes and metrics into per-variant stats.

Per rollout and variant, over three windows (by default the last 100 runs or the last 5
minutes, whichever a guard asks for, and everything since the start):

- ``"last_n"``: the last N decisions of the rollout (so the split is meaningful), the
  last N outcomes of the variant and the last N samples of each of its metrics;
- ``"time"``: everything whose event time is within ``window_ms`` of the rollout's
  *now* = max(latest event time of the rollout, latest engine Tick). It moves on event
  time and ticks, never on the wall clock, so a replay sees the same windows;
- ``"all"``: everything since the start (quantiles from a DDSketch, 1% accuracy).

It reports decisions and the observed split, shadow-diff rate per dimension, outcomes
by verdict, quality mean and variance, and per metric count, mean and p50/p95/p99;
``error`` (0/1 values) gives the error rate and ``cost_cents`` the cost mean.

The rollback consumer composes this same class over the raw log (one instance per
rollout); the ``canary_stats`` consumer runs one instance for all rollouts and
publishes summaries for people and dashboards. State is kept compact for 10,000
active rollouts (rings instead of deques, lazy sketches) and snapshots incrementally
(the projection contract, ``consumers.projection``): a commit encodes only the
rollouts touched since the last one.

Example::

    stats = CanaryStats(last_n=100, window_ms=300_000)
    for seq, event in enumerate(events, 1):
        stats.apply(event, seq)
    stats.view("checkout", "last_n")["candidate"].metrics["latency_ms"].p95
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from rollout_engine.consumers.canary_state import NO_SHADOW as _NO_SHADOW
from rollout_engine.consumers.canary_state import (
    MetaState,
    decode_rollout,
    encode_rollout,
    encoder,
    meta_decoder,
)
from rollout_engine.consumers.canary_state import RolloutStats as _Rollout
from rollout_engine.consumers.canary_state import VariantStats as _Variant
from rollout_engine.consumers.projection import META, RolloutProjection
from rollout_engine.consumers.windows import Series, trim
from rollout_engine.events import AnyEvent, Decision, Event, Metric, Outcome, Tick

__all__ = ["WINDOWS", "CanaryStats", "MetricView", "VariantView"]

WINDOWS = ("last_n", "time", "all")
VERDICTS = ("win", "loss", "neutral", "inconclusive")
_VERDICT_CODE = {v: i for i, v in enumerate(VERDICTS)}
QUALITY = "quality"
MAX_DIMS = 31
"""Shadow-diff dimensions tracked per rollout (more are ignored; a shadow diff usually has 4:
agent, steps, tools, dry_run). 31 because a decision's diff is two 32-bit masks in one int64."""
MAX_METRICS = 64
"""Metric names tracked per variant (more are ignored, so a buggy producer cannot exhaust memory)."""
MAX_VARIANTS = 64
"""Variants tracked per rollout (events of more are ignored, for the same reason)."""
_MASK = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class MetricView:
    """One metric of one variant in one window."""

    n: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    var: float | None = None
    """Sample variance of the window's values (``all``: of every sample, Welford)."""


@dataclass(frozen=True, slots=True)
class VariantView:
    """What one variant looks like in one window (read API for guards and dashboards)."""

    decisions: int = 0
    outcomes: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    quality_n: int = 0
    quality_mean: float | None = None
    quality_var: float | None = None
    metrics: dict[str, MetricView] = field(default_factory=dict)
    diff_rate: dict[str, float] = field(default_factory=dict)
    shadowed: int = 0
    error_rate: float | None = None
    cost_mean: float | None = None


class CanaryStats(RolloutProjection[_Rollout]):
    """Projection ``canary_stats``: per-rollout, per-variant stats over three windows.

    Its meta part holds the window settings (checked on restore), the last engine tick
    and the latest producer event time.
    """

    name = "canary_stats"
    resting = staticmethod(lambda _state: True)  # a tick moves only the meta part: every rollout may rest

    def __init__(self, last_n: int = 100, window_ms: int = 300_000, time_cap: int = 1000, sketch: bool = True,
                 series_only: bool = False) -> None:
        """``time_cap`` bounds each series of the time window (memory); beyond it the
        window holds the most recent entries within ``window_ms``, between 7/8 of
        ``time_cap`` and ``time_cap`` of them (never fewer than ``last_n``).

        The rollback consumer's evidence keeps what guards read, no more: ``sketch=False``
        no sketch of every sample (``windows.Series.push``; the ``all`` window keeps count,
        mean and variance), ``series_only=True`` the metric and quality series alone (no
        split, verdicts or shadow diffs: their views stay empty)."""
        if last_n < 1 or window_ms < 1 or time_cap < 8:
            raise ValueError(f"CanaryStats needs last_n >= 1, window_ms >= 1, time_cap >= 8; "
                             f"got {last_n}, {window_ms}, {time_cap}")
        super().__init__()
        self.last_n = last_n
        self.window_ms = window_ms
        self.time_cap = time_cap
        self._cap = max(time_cap, last_n)
        self.sketch = sketch
        self.series_only = series_only
        self.max_ms = 0
        """Latest (bounded) producer event time of any rollout."""

    @property
    def tick_ms(self) -> int:
        """The last engine tick (0 before the first)."""
        return self.clock.last_tick_ms

    # --- the fold ------------------------------------------------------------------------
    def apply(self, event: AnyEvent, seq: int = 0) -> list[Event]:
        """Fold one event (any kind; non-producer events other than ticks are ignored)."""
        cls = type(event)
        if cls is Tick:
            self.tick(event.time_ms)
            return []
        if cls is not Metric and cls is not Outcome and cls is not Decision:
            return []
        self.sample(event, cls, seq)
        return []

    def sample(self, event: Decision | Outcome | Metric, cls: type, seq: int) -> None:
        """Fold one producer event of type ``cls`` (the rollback fold calls this directly:
        it has dispatched on the type already)."""
        rollout = event.rollout
        rs = self.rollouts.get(rollout)
        if rs is None:
            rs = self.rollouts[rollout] = _Rollout()
        clock = self.clock
        t = clock.bound(event.time_ms)  # clock-skew policy: consumers/eventtime.py
        if t > rs.max_ms:
            rs.max_ms = t
            if t > self.max_ms:
                self.max_ms = t
                self._dirty.add(META)
        self._dirty.add(rollout)
        tick = clock.last_tick_ms
        cutoff = (rs.max_ms if rs.max_ms > tick else tick) - self.window_ms
        vs = rs.variants.get(event.variant)  # type: ignore[union-attr]
        if vs is None:
            if len(rs.vnames) >= MAX_VARIANTS:
                return
            vs = rs.variants[event.variant] = _Variant(event.variant, len(rs.vnames))  # type: ignore[union-attr]
            rs.vnames.append(vs.name)
        if cls is Metric:
            series = vs.metrics.get(event.name)  # type: ignore[union-attr]
            if series is None:
                if len(vs.metrics) >= MAX_METRICS:
                    return
                series = vs.metrics[event.name] = Series()  # type: ignore[union-attr]
            series.push(event.value, t, cutoff, self.last_n, self._cap, seq, self.sketch)  # type: ignore[union-attr]
        elif cls is Outcome:
            if not self.series_only:
                self._verdict(vs, event, t, cutoff)  # type: ignore[arg-type]
            if event.quality is not None:  # type: ignore[union-attr]
                quality = vs.quality
                if quality is None:
                    quality = vs.quality = Series()
                quality.push(event.quality, t, cutoff, self.last_n, self._cap, seq, self.sketch)  # type: ignore[union-attr]
        elif not self.series_only:
            self._decision(rs, vs, event, t, cutoff)  # type: ignore[arg-type]

    def _verdict(self, vs: _Variant, event: Outcome, t: int, cutoff: int) -> None:
        code = _VERDICT_CODE[event.verdict]
        vs.outcomes += 1
        vs.verdicts[code] += 1
        n, times = self.last_n, vs.otimes
        size = len(times)
        if size >= n and (times[0] <= cutoff or size >= self._cap):
            if size == n:  # trim() would drop exactly the oldest (windows.Series.push)
                del times[0], vs.ocodes[0]
            else:
                trim(times, cutoff, n - 1, self._cap, vs.ocodes)
        times.append(t)
        vs.ocodes.append(code)

    def _decision(self, rs: _Rollout, vs: _Variant, event: Decision, t: int, cutoff: int) -> None:
        vs.decisions += 1
        code = _NO_SHADOW
        shadow = event.shadow
        if shadow is not None:
            vs.shadowed += 1
            present = changed = 0
            dims = rs.dims
            for dim, flag in shadow.diff.items():
                try:
                    idx = dims.index(dim)
                except ValueError:
                    if len(dims) >= MAX_DIMS:
                        continue
                    idx = len(dims)
                    dims.append(dim)
                key = dims[idx]
                present |= 1 << idx
                vs.diff_seen[key] = vs.diff_seen.get(key, 0) + 1
                if flag:
                    changed |= 1 << idx
                    vs.diff_changed[key] = vs.diff_changed.get(key, 0) + 1
            code = (present << 32) | changed
            if rs.dcodes is None:
                rs.dcodes = array("q", [_NO_SHADOW]) * len(rs.dtimes)
        n, times = self.last_n, rs.dtimes
        size = len(times)
        if size == n and (times[0] <= cutoff or size >= self._cap):  # trim() would drop exactly the oldest
            del times[0], rs.dvar[0]
            if rs.dcodes is not None:
                del rs.dcodes[0]
        elif size >= n and (times[0] <= cutoff or size >= self._cap):
            if rs.dcodes is None:
                trim(times, cutoff, n - 1, self._cap, rs.dvar)
            else:
                trim(times, cutoff, n - 1, self._cap, rs.dvar, rs.dcodes)
        times.append(t)
        rs.dvar.append(vs.index)
        if rs.dcodes is not None:
            rs.dcodes.append(code)

    # --- reads ---------------------------------------------------------------------------
    def now_ms(self, rollout: str | None = None) -> int:
        """Latest event or tick time seen (of one rollout's events plus ticks, or of all)."""
        if rollout is None:
            return max(self.tick_ms, self.max_ms)
        rs = self.rollouts.get(rollout)
        return max(self.tick_ms, rs.max_ms if rs else 0)

    def _cutoff(self, rs: _Rollout) -> int:
        return max(self.tick_ms, rs.max_ms) - self.window_ms

    def cutoff(self, rollout: str) -> int:
        """The time window's cut-off of ``rollout``: entries at or before it are out."""
        rs = self.rollouts.get(rollout)
        return max(self.tick_ms, rs.max_ms if rs else 0) - self.window_ms

    @staticmethod
    def _check_window(window: str) -> None:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; expected one of {WINDOWS}")

    def _decision_entries(self, rs: _Rollout, window: str) -> Iterable[tuple[str, int]]:
        """(variant, diff code) of the decisions in a bounded window."""
        names = rs.vnames
        if window == "last_n":
            n = self.last_n
            variants = rs.dvar[-n:]
            codes = rs.dcodes[-n:] if rs.dcodes is not None else [_NO_SHADOW] * len(variants)
            return [(names[v], c) for v, c in zip(variants, codes, strict=True)]
        cutoff = self._cutoff(rs)
        codes = rs.dcodes if rs.dcodes is not None else [_NO_SHADOW] * len(rs.dvar)
        return [(names[v], c) for t, v, c in zip(rs.dtimes, rs.dvar, codes, strict=True) if t > cutoff]

    def split(self, rollout: str, window: str) -> dict[str, int]:
        """Decisions per variant in a window: the observed split."""
        self._check_window(window)
        rs = self.rollouts.get(rollout)
        if rs is None:
            return {}
        if window == "all":
            return {name: vs.decisions for name, vs in sorted(rs.variants.items())}
        counts = dict.fromkeys(sorted(rs.variants), 0)
        for name, _ in self._decision_entries(rs, window):
            counts[name] += 1
        return counts

    def view(self, rollout: str, window: str) -> dict[str, VariantView]:
        """Every variant of ``rollout`` in ``window`` (``{}`` for an unknown rollout)."""
        self._check_window(window)
        rs = self.rollouts.get(rollout)
        if rs is None:
            return {}
        cutoff = self._cutoff(rs)
        diff = self._diff_counts(rs, window)
        decisions = self.split(rollout, window)
        return {name: self._variant_view(vs, window, cutoff, decisions[name], diff.get(name))
                for name, vs in sorted(rs.variants.items())}

    def _diff_counts(self, rs: _Rollout, window: str) -> dict[str, tuple[int, dict[str, int], dict[str, int]]]:
        """Per variant: (shadowed decisions, seen per dim, changed per dim)."""
        if window == "all":
            return {n: (vs.shadowed, vs.diff_seen, vs.diff_changed) for n, vs in rs.variants.items()}
        out: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {}
        dims = rs.dims
        for name, code in self._decision_entries(rs, window):
            if code == _NO_SHADOW:
                continue
            shadowed, seen, changed = out.get(name, (0, {}, {}))
            present, flags = code >> 32, code & _MASK
            for idx, dim in enumerate(dims):
                bit = 1 << idx
                if present & bit:
                    seen[dim] = seen.get(dim, 0) + 1
                    if flags & bit:
                        changed[dim] = changed.get(dim, 0) + 1
            out[name] = (shadowed + 1, seen, changed)
        return out

    def _variant_view(self, vs: _Variant, window: str, cutoff: int, decisions: int,
                      diff: tuple[int, dict[str, int], dict[str, int]] | None) -> VariantView:
        if window == "all":
            counts = vs.verdicts
        else:
            codes = vs.ocodes[-self.last_n:] if window == "last_n" else [
                c for t, c in zip(vs.otimes, vs.ocodes, strict=True) if t > cutoff]
            counts = [0, 0, 0, 0]
            for c in codes:
                counts[c] += 1
        verdicts = {v: counts[i] for i, v in enumerate(VERDICTS) if counts[i]}
        q_n, q_mean, q_var = 0, None, None
        if vs.quality is not None:
            q_n, q_mean, q_var, _ = vs.quality.summary(window, cutoff, self.last_n)
        metrics: dict[str, MetricView] = {}
        for name in sorted(vs.metrics):
            n, mean, var, qs = vs.metrics[name].summary(window, cutoff, self.last_n)
            if n:
                p50, p95, p99 = qs if qs else (None, None, None)
                metrics[name] = MetricView(n, mean, p50, p95, p99, var)
        shadowed, seen, changed = diff or (0, {}, {})
        rates = {dim: changed.get(dim, 0) / seen[dim] for dim in sorted(seen)}
        error, cost = metrics.get("error"), metrics.get("cost_cents")
        return VariantView(
            decisions=decisions, outcomes=sum(counts), verdicts=verdicts, quality_n=q_n,
            quality_mean=q_mean, quality_var=q_var, metrics=metrics, diff_rate=rates,
            shadowed=shadowed, error_rate=error.mean if error else None,
            cost_mean=cost.mean if cost else None,
        )

    def samples(self, rollout: str, variant: str, metric: str, window: str) -> list[float]:
        """Raw values of ``metric`` (or ``"quality"``) in a window, oldest first, for rank tests.

        ``time`` and ``last_n`` are exact. ``all`` keeps no unbounded sample list: it
        gives every value while there are at most N, then the last N.
        """
        self._check_window(window)
        rs = self.rollouts.get(rollout)
        vs = rs.variants.get(variant) if rs else None
        if vs is None:
            return []
        series = vs.quality if metric == QUALITY else vs.metrics.get(metric)
        if series is None:
            return []
        return series.window_values(window, self._cutoff(rs), self.last_n)  # type: ignore[arg-type]

    def series(self, rollout: str, variant: str, metric: str) -> Series | None:
        """The series behind ``metric`` (or ``"quality"``) of one variant, for reads of
        every sample (count, Welford mean and variance, quantiles, binned histogram)
        without building a view. Read-only: the fold owns it."""
        rs = self.rollouts.get(rollout)
        vs = rs.variants.get(variant) if rs else None
        if vs is None:
            return None
        return vs.quality if metric == QUALITY else vs.metrics.get(metric)

    # --- parts (the projection contract) -----------------------------------------------
    def encode_meta(self) -> bytes:
        return encoder.encode(MetaState(self.last_n, self.window_ms, self.time_cap, self.tick_ms, self.max_ms))

    def decode_meta(self, blob: bytes) -> None:
        meta = meta_decoder.decode(blob)
        if (meta.last_n, meta.window_ms, meta.time_cap) != (self.last_n, self.window_ms, self.time_cap):
            raise ValueError(
                f"canary-stats snapshot was made with last_n={meta.last_n}, window_ms={meta.window_ms}, "
                f"time_cap={meta.time_cap} but this fold uses {self.last_n}, {self.window_ms}, "
                f"{self.time_cap}; delete the consumer's store to rebuild it from the log"
            )
        self.clock.last_tick_ms, self.max_ms = meta.tick_ms, meta.max_ms

    def encode_rollout(self, rollout: str) -> bytes:
        return encode_rollout(self.rollouts[rollout])

    def decode_rollout(self, rollout: str, blob: bytes) -> _Rollout:
        return decode_rollout(blob)

    def clear(self) -> None:
        super().clear()
        self.max_ms = 0
