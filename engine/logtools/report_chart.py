"""The weekly report's chart: each guarded metric of each rollout, with its threshold.

A rollout killed for latency must show its latency, so every guard of the rollout's
rollback policy that has data gets a panel: baseline and candidate aggregated per time
bucket as the guard aggregates them (mean, rate, p50, p95, p99), the guard's threshold
(a constant for ``absolute`` guards, the baseline shifted or scaled for relative ones),
kill switches in red and re-enables in green.

Each rollout gets its own time axis and bucket (about :data:`POINTS` points over its
active span), so a 20-second rollout is a line, not a dot, beside a week-long one. The
axis ends at the last data (never after ``now``), and the value axis always includes the
threshold, so a 0.02-point wobble is not blown up to full height.

:func:`panels` computes everything drawn (pure, tested); :func:`render_chart` draws it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout_engine.consumers.rollback.policy import Guard
from rollout_engine.consumers.windows import quantile

if TYPE_CHECKING:
    from rollout_engine.engine.logtools.report import RolloutWeek, WeeklyRollup

__all__ = ["Panel", "guard_summary", "panels", "render_chart"]

POINTS = 60
"""Target number of buckets over a rollout's active span."""
NICE_BUCKETS_MS = (1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
                   1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000)
MAX_ROLLOUTS = 8
MAX_GUARDS = 4
MIN_PERCENTILE_SAMPLES = 3
_SYMBOL = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


@dataclass
class Panel:
    """One guard of one rollout, as drawn."""

    rollout: str
    guard: Guard
    bucket_ms: int
    series: dict[str, list[tuple[int, float]]]
    """variant -> [(bucket middle, aggregate)]."""
    limit: list[tuple[int, float]]
    limit_label: str
    xlim: tuple[int, int]
    ylim: tuple[float, float]
    kills: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    reenabled: list[int] = field(default_factory=list)


def aggregate(values: list[float], how: str) -> float | None:
    """A bucket's value as the guard computes it (percentiles as the rollback consumer does)."""
    if not values:
        return None
    if how in ("mean", "rate"):
        return math.fsum(values) / len(values)
    if len(values) < MIN_PERCENTILE_SAMPLES:
        return None
    return quantile(sorted(values), float(how[1:]) / 100.0)


def _bucket_for(span_ms: int, sparsest: dict[str, int]) -> int:
    """About :data:`POINTS` buckets over the span, but wide enough that the sparsest
    series of each aggregate has samples in a bucket (a p95 of 2 values is noise)."""
    wanted = span_ms / POINTS
    for how, n in sparsest.items():
        need = 1 if how in ("mean", "rate") else 2 * MIN_PERCENTILE_SAMPLES
        wanted = max(wanted, need * span_ms / max(n, 1))
    return next((b for b in NICE_BUCKETS_MS if b >= wanted), NICE_BUCKETS_MS[-1])


def _limit(guard: Guard, baseline: dict[int, float]) -> tuple[dict[int, float] | None, str]:
    """The candidate value at which the guard fails, per bucket, and how to say it."""
    t, unit = guard.threshold, f" {guard.unit}" if guard.unit else ""
    if guard.mode == "absolute":
        return None, f"threshold {t:g}{unit}"
    if guard.mode == "decrease":
        return {b: v - t for b, v in baseline.items()}, f"threshold: baseline - {t:g}{unit}"
    if guard.mode == "increase":
        return {b: v + t for b, v in baseline.items()}, f"threshold: baseline + {t:g}{unit}"
    return {b: v * t for b, v in baseline.items()}, f"threshold: baseline x {t:g}"


def _rollout_panels(week: RolloutWeek, baseline: str, candidate: str, end_ms: int) -> list[Panel]:
    guards = [g for g in week.guards if any((g.metric, v) in week.samples for v in (baseline, candidate))][:MAX_GUARDS]
    times = [t for g in guards for v in (baseline, candidate) if (g.metric, v) in week.samples
             for t in week.samples[(g.metric, v)].times]
    if not times:
        return []
    first, last = min(times), max(times)
    sparsest: dict[str, int] = {}
    for g in guards:
        for v in (baseline, candidate):
            if (g.metric, v) in week.samples:
                n = len(week.samples[(g.metric, v)].times)
                sparsest[g.aggregate] = min(sparsest.get(g.aggregate, n), n)
    bucket = _bucket_for(last - first, sparsest)
    lo = first - first % bucket
    hi = max(lo + bucket, min(last - last % bucket + bucket, end_ms))
    out = []
    for guard in guards:
        series: dict[str, list[tuple[int, float]]] = {}
        for variant in (baseline, candidate):
            samples = week.samples.get((guard.metric, variant))
            if samples is None:
                continue
            buckets: dict[int, list[float]] = {}
            for t, v in zip(samples.times, samples.values, strict=True):
                buckets.setdefault(t - t % bucket, []).append(v)
            points = [(b + bucket // 2, aggregate(vs, guard.aggregate)) for b, vs in sorted(buckets.items())]
            series[variant] = [(b, v) for b, v in points if v is not None]
        by_bucket, label = _limit(guard, dict(series.get(baseline, [])))
        limit = [(lo, guard.threshold), (hi, guard.threshold)] if by_bucket is None else sorted(by_bucket.items())
        values = [v for points in (*series.values(), limit) for _, v in points]
        ymin, ymax = (min(values), max(values)) if values else (0.0, 1.0)
        half = 0.54 * max(ymax - ymin, 0.02 * max(abs(ymin), abs(ymax)), 1e-9)  # 8% margin around the range
        mid = (ymin + ymax) / 2
        out.append(Panel(week.rollout, guard, bucket, series, limit, label, (lo, hi), (mid - half, mid + half),
                         [(t, g) for t, _a, _r, g in week.kills], list(week.reenabled)))
    return out


def panels(rollup: WeeklyRollup, now_ms: int | None = None) -> list[list[Panel]]:
    """Rows of panels, one row per rollout (killed ones first, then by traffic)."""
    end = rollup.end_ms if now_ms is None else min(rollup.end_ms, now_ms)
    order = sorted(rollup.rollouts.values(), key=lambda w: (-len(w.kills), -w.total, w.rollout))
    rows = [_rollout_panels(w, rollup.baseline, rollup.candidate, end) for w in order[:MAX_ROLLOUTS]]
    return [row for row in rows if row]


def guard_summary(week: RolloutWeek, baseline: str, candidate: str) -> list[tuple[str, ...]]:
    """Rows (guard, measure, baseline, candidate, fails when) over the whole period."""
    rows = []
    for guard in week.guards:
        got = {v: aggregate(list(week.samples[(guard.metric, v)].values), guard.aggregate)
               for v in (baseline, candidate) if (guard.metric, v) in week.samples}
        if not got:
            continue
        unit = f" {guard.unit}" if guard.unit else ""
        cells = ["-" if got.get(v) is None else f"{got[v]:.4g}{unit}" for v in (baseline, candidate)]
        rows.append((guard.name, f"{guard.aggregate} of {guard.metric}", *cells, fails_when(guard)))
    return rows


def fails_when(guard: Guard) -> str:
    """The guard's rule in words, e.g. ``candidate > 1600 ms`` or ``baseline - candidate > 5``."""
    symbol, t = _SYMBOL[guard.comparator], f"{guard.threshold:g}{f' {guard.unit}' if guard.unit else ''}"
    return {"absolute": f"candidate {symbol} {t}", "decrease": f"baseline - candidate {symbol} {t}",
            "increase": f"candidate - baseline {symbol} {t}",
            "ratio": f"candidate / baseline {symbol} {guard.threshold:g}"}[guard.mode]


def _when(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _draw(ax: Any, panel: Panel, baseline: str, candidate: str) -> None:
    unit = f" ({panel.guard.unit})" if panel.guard.unit else ""
    ax.set_title(f"{panel.rollout}: {panel.guard.name} (fails when {fails_when(panel.guard)})", loc="left", fontsize=9)
    ax.set_ylabel(f"{panel.guard.aggregate} {panel.guard.metric}{unit}", fontsize=8)
    ax.grid(alpha=0.3)
    for variant, colour in ((baseline, "tab:blue"), (candidate, "tab:orange")):
        points = panel.series.get(variant) or []
        if points:
            ax.plot([_when(t) for t, _ in points], [v for _, v in points], color=colour, linewidth=1.4,
                    marker="o" if len(points) < 15 else None, markersize=3)
    ax.plot([_when(t) for t, _ in panel.limit], [v for _, v in panel.limit], color="0.35", linestyle="--",
            linewidth=1.0)
    for t, guards in panel.kills:  # solid where this guard fired, dotted where another one did
        fired = panel.guard.name in guards
        ax.axvline(_when(t), color="red", linestyle="-" if fired else ":", linewidth=1.6 if fired else 1.0)
    for t in panel.reenabled:
        ax.axvline(_when(t), color="green", linestyle=":")
    ax.set_xlim(_when(panel.xlim[0]), _when(panel.xlim[1]))
    ax.set_ylim(*panel.ylim)
    ax.tick_params(labelsize=7)


def _legend(fig: Any, baseline: str, candidate: str) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="tab:blue", label=baseline), Line2D([], [], color="tab:orange", label=candidate),
               Line2D([], [], color="0.35", linestyle="--", label="threshold (candidate beyond it fails)"),
               Line2D([], [], color="red", label="kill switch by this guard"),
               Line2D([], [], color="red", linestyle=":", label="kill switch by another guard"),
               Line2D([], [], color="green", linestyle=":", label="re-enabled")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.965))


def render_chart(rollup: WeeklyRollup, path: Path, now_ms: int | None = None) -> Path:
    """Draw :func:`panels` as a PNG: one row per rollout, one column per guarded metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = panels(rollup, now_ms)
    ncols = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(max(len(rows), 1), ncols, figsize=(max(10.0, 4.8 * ncols + 0.4), 2.8 * max(len(rows), 1) + 0.9),
                             squeeze=False)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no guarded metric recorded in this period", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            _draw(ax, row[c], rollup.baseline, rollup.candidate)
            locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle("Guarded metrics per rollout: baseline vs candidate, aggregated per time bucket as the guard "
                 "aggregates them (UTC)", fontsize=10, y=0.995)
    _legend(fig, rollup.baseline, rollup.candidate)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
