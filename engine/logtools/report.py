"""Seed 001's weekly rollup, from the log: traffic split, disagreement, recommendations, chart.

:class:`WeeklyRollup` is a pure fold (no I/O, no clock: the period is given) over a
week of events. :func:`render` writes the Markdown report and a PNG chart of baseline
against candidate quality over time, one panel per rollout, kill switches marked.

What the sections mean here (seed 001 compared two planners; we compare the variants
of each rollout):

* **Traffic split**: decisions per variant.
* **Disagreement rate**: share of decisions with a shadow result in which at least one
  compared dimension changed; per dimension too.
* **Top disagreements**: the (rollout, context, dimension) triples that changed most.
* **Recommendations**: rules over the numbers (below), each with its reason.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_engine.events import AnyEvent, Decision, KillSwitch, Outcome, Resume

__all__ = ["RolloutWeek", "WeeklyRollup", "iso_week", "recommendations", "render", "week_bounds"]

BUCKET_MS = 3_600_000
"""Chart resolution: one point per hour."""
HIGH_DISAGREEMENT = 0.20
MIN_CANDIDATE_OUTCOMES = 30
QUALITY_MARGIN = 1.0
"""Quality points within which the candidate counts as on par with the baseline."""


def week_bounds(week: str | None, now_ms: int) -> tuple[int, int, str]:
    """(start_ms, end_ms, label): an ISO week (``2026-W47``) or the 7 days up to ``now_ms``."""
    if week and week != "last":
        try:
            year, num = week.upper().split("-W")
            start = dt.datetime.fromisocalendar(int(year), int(num), 1).replace(tzinfo=dt.UTC)
        except ValueError:
            raise ValueError(f"week {week!r}: expected an ISO week such as 2026-W47, or 'last'") from None
        start_ms = int(start.timestamp() * 1000)
        return start_ms, start_ms + 7 * 86_400_000, f"{int(year)}-W{int(num):02d}"
    end_ms = now_ms
    start_ms = end_ms - 7 * 86_400_000
    return start_ms, end_ms, iso_week(end_ms)


def iso_week(time_ms: int) -> str:
    year, week, _ = dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _day(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


@dataclass
class RolloutWeek:
    """One rollout's week."""

    rollout: str
    decisions: Counter[str] = field(default_factory=Counter)
    shadowed: int = 0
    disagreed: int = 0
    dimensions: Counter[str] = field(default_factory=Counter)
    top: Counter[tuple[str, str]] = field(default_factory=Counter)
    quality: dict[str, list[float]] = field(default_factory=dict)
    """variant -> [n, sum] over the week."""
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    series: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    """(variant, hour bucket) -> [n, sum of quality]."""
    kills: list[tuple[int, str, str]] = field(default_factory=list)
    resumes: list[tuple[int, str]] = field(default_factory=list)
    last_canary_pct: float | None = None

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    def disagreement_rate(self) -> float | None:
        return self.disagreed / self.shadowed if self.shadowed else None

    def mean_quality(self, variant: str) -> float | None:
        n, total = self.quality.get(variant, [0.0, 0.0])
        return total / n if n else None


class WeeklyRollup:
    """Fold events of one period into per-rollout weeks (events outside are ignored)."""

    def __init__(self, start_ms: int, end_ms: int, baseline: str = "baseline", candidate: str = "candidate",
                 bucket_ms: int = BUCKET_MS) -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.bucket_ms = bucket_ms
        self.baseline, self.candidate = baseline, candidate
        self.rollouts: dict[str, RolloutWeek] = {}
        self.events = 0

    def _week(self, rollout: str) -> RolloutWeek:
        week = self.rollouts.get(rollout)
        if week is None:
            week = self.rollouts[rollout] = RolloutWeek(rollout)
        return week

    def add(self, event: AnyEvent) -> None:
        if not self.start_ms <= event.time_ms < self.end_ms or event.rollout.startswith("_"):
            return
        if isinstance(event, Decision):
            week = self._week(event.rollout)
            week.decisions[event.variant] += 1
            week.last_canary_pct = event.canary_pct
            shadow = event.shadow
            if shadow is not None and shadow.diff:
                week.shadowed += 1
                changed = [d for d, flag in shadow.diff.items() if flag]
                if changed:
                    week.disagreed += 1
                for dimension in changed:
                    week.dimensions[dimension] += 1
                    week.top[(event.context or "-", dimension)] += 1
        elif isinstance(event, Outcome):
            week = self._week(event.rollout)
            week.outcomes[(event.variant, event.verdict)] += 1
            if event.quality is not None:
                slot = week.quality.setdefault(event.variant, [0.0, 0.0])
                slot[0] += 1
                slot[1] += event.quality
                bucket = event.time_ms - event.time_ms % self.bucket_ms
                point = week.series.setdefault((event.variant, bucket), [0.0, 0.0])
                point[0] += 1
                point[1] += event.quality
        elif isinstance(event, KillSwitch):
            self._week(event.rollout).kills.append((event.time_ms, event.actor, event.reason))
        elif isinstance(event, Resume):
            self._week(event.rollout).resumes.append((event.time_ms, event.actor))
        else:
            return
        self.events += 1

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name, week in sorted(self.rollouts.items()):
            out[name] = {
                "decisions": dict(week.decisions),
                "disagreement_rate": week.disagreement_rate(),
                "dimensions": dict(week.dimensions),
                "quality": {v: week.mean_quality(v) for v in sorted(week.quality)},
                "kills": [{"time_ms": t, "actor": a, "reason": r} for t, a, r in week.kills],
                "recommendations": recommendations(week, self.baseline, self.candidate),
            }
        return out


def recommendations(week: RolloutWeek, baseline: str = "baseline", candidate: str = "candidate") -> list[str]:
    """Seed 001's recommendation rules, each saying why."""
    recs: list[str] = []
    if week.kills:
        last = week.kills[-1]
        recs.append(f"WARN: {len(week.kills)} kill switch(es) this week, last by {last[1]}: {last[2][:160]}. "
                    "Read the breach details (`rollout status ROLLOUT`), fix the cause, then re-enable at 5% "
                    "(`rollout resume ROLLOUT --canary-pct 5`).")
    rate = week.disagreement_rate()
    if rate is not None and rate > HIGH_DISAGREEMENT:
        top = ", ".join(d for d, _ in week.dimensions.most_common(2))
        recs.append(f"WARN: review the candidate's logic: {rate:.0%} of shadowed decisions disagree "
                    f"(mostly {top}).")
    cand_n = int(week.quality.get(candidate, [0, 0])[0])
    base_q, cand_q = week.mean_quality(baseline), week.mean_quality(candidate)
    if cand_n < MIN_CANDIDATE_OUTCOMES:
        recs.append(f"INFO: only {cand_n} candidate outcomes with quality; too few to judge "
                    f"(need {MIN_CANDIDATE_OUTCOMES}); keep the split or raise it slightly.")
    elif base_q is not None and cand_q is not None and not week.kills:
        if cand_q + QUALITY_MARGIN >= base_q and (rate is None or rate <= HIGH_DISAGREEMENT):
            pct = week.last_canary_pct
            recs.append(f"OK: candidate quality {cand_q:.1f} vs baseline {base_q:.1f}; "
                        + ("consider the next canary step." if pct is None or pct < 100 else "fully rolled out."))
        elif cand_q + QUALITY_MARGIN < base_q:
            recs.append(f"WARN: candidate quality {cand_q:.1f} trails the baseline's {base_q:.1f}; hold the split.")
    if not recs:
        recs.append("OK: maintain the current split.")
    return recs


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def render_markdown(rollup: WeeklyRollup, label: str, chart_name: str | None) -> str:
    lines = [f"# Rollout weekly report: {label}", "",
             f"**Period:** {_day(rollup.start_ms)} to {_day(rollup.end_ms)} (UTC, event time)  ",
             f"**Rollouts:** {len(rollup.rollouts)}  ",
             f"**Events counted:** {rollup.events}", ""]
    if chart_name:
        lines += [f"![Baseline vs candidate quality, kill switches marked]({chart_name})", ""]
    if not rollup.rollouts:
        lines += ["No rollout activity in this period.", ""]
    for name, week in sorted(rollup.rollouts.items()):
        total = week.total
        lines += [f"## {name}", "", "### Traffic split"]
        if total:
            for variant, n in week.decisions.most_common():
                lines.append(f"- {variant}: {n} decisions ({n / total:.1%})")
        else:
            lines.append("- no decisions")
        lines += ["", "### Decision differences"]
        rate = week.disagreement_rate()
        if rate is None:
            lines.append("- no shadow comparisons recorded")
        else:
            lines.append(f"- Disagreement rate: {rate:.1%} of {week.shadowed} shadowed decisions")
            for dimension, n in week.dimensions.most_common():
                lines.append(f"  - {dimension} changed: {n / week.shadowed:.1%}")
        if week.top:
            lines += ["", "### Top disagreements", ""]
            lines += _table([(f"`{c}`", f"`{d}`", n) for (c, d), n in week.top.most_common(10)],
                            ("Context", "Dimension", "Count"))
        lines += ["", "### Quality"]
        for variant in sorted(week.quality):
            n = int(week.quality[variant][0])
            lines.append(f"- {variant}: mean {week.mean_quality(variant):.2f} over {n} outcomes")
        if week.kills:
            lines += ["", "### Kill switches", ""]
            lines += _table([(dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S"), a, r[:200])
                             for t, a, r in week.kills], ("Time (UTC)", "Actor", "Reason"))
        lines += ["", "### Recommendations"]
        lines += [f"- {r}" for r in recommendations(week, rollup.baseline, rollup.candidate)]
        lines += ["", "### Actions",
                  "- [ ] Review the top disagreements for correctness",
                  "- [ ] Compare baseline and candidate quality on the chart",
                  "- [ ] Decide the next canary step (`rollout set ROLLOUT --canary-pct N`)", ""]
    return "\n".join(lines)


def render_chart(rollup: WeeklyRollup, path: Path, max_panels: int = 8) -> Path:
    """PNG: per rollout, mean quality per bucket of baseline and candidate; kills as red lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    names = sorted(rollup.rollouts, key=lambda n: -rollup.rollouts[n].total)[:max_panels] or ["(none)"]
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.6 * len(names) + 0.6), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names, strict=True):
        week = rollup.rollouts.get(name)
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel("quality")
        ax.grid(alpha=0.3)
        if week is None:
            ax.text(0.5, 0.5, "no activity", ha="center", va="center", transform=ax.transAxes)
            continue
        for variant, colour in ((rollup.baseline, "tab:blue"), (rollup.candidate, "tab:orange")):
            points = sorted((b, s / n) for (v, b), (n, s) in week.series.items() if v == variant and n)
            if points:
                xs = [dt.datetime.fromtimestamp(b / 1000, tz=dt.UTC) for b, _ in points]
                ax.plot(xs, [q for _, q in points], marker="o", markersize=3, color=colour, label=variant)
        for index, (t, _actor, _reason) in enumerate(week.kills):
            ax.axvline(dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC), color="red", linestyle="--",
                       label="kill switch" if index == 0 else None)
        if ax.has_data():
            ax.legend(loc="lower left", fontsize=8)
    start = dt.datetime.fromtimestamp(rollup.start_ms / 1000, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(rollup.end_ms / 1000, tz=dt.UTC)
    times = [b for week in rollup.rollouts.values() for (_v, b) in week.series]
    times += [t for week in rollup.rollouts.values() for (t, _a, _r) in week.kills]
    if times:  # fit the axis to the data, with a bucket of margin, not to the whole week
        start = dt.datetime.fromtimestamp((min(times) - rollup.bucket_ms) / 1000, tz=dt.UTC)
        end = dt.datetime.fromtimestamp((max(times) + 2 * rollup.bucket_ms) / 1000, tz=dt.UTC)
    axes[-1, 0].set_xlim(start, end)
    short = (end - start) < dt.timedelta(hours=2)
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if short else "%m-%d %H:%M"))
    per = "second" if rollup.bucket_ms == 1000 else ("hour" if rollup.bucket_ms == BUCKET_MS else f"{rollup.bucket_ms} ms")
    fig.suptitle(f"Baseline vs candidate quality (mean per {per}); dashed red: kill switch", fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(rollup: WeeklyRollup, label: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report-<label>.md`` and ``report-<label>.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = render_chart(rollup, out / f"report-{label}.png")
    markdown = out / f"report-{label}.md"
    markdown.write_text(render_markdown(rollup, label, chart.name))
    return markdown, chart

