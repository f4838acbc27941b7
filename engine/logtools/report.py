"""The weekly rollup, from the log: traffic split, disagreement, guarded metrics, recommendations.

:class:`WeeklyRollup` is a pure fold (no I/O, no clock: the period is given) over a
week of events. :func:`render` writes the Markdown report and a PNG chart
(``report_chart.py``): per rollout, each metric its rollback policy guards, baseline
against candidate, with the guard's threshold and the kill switches marked.

What the sections mean (we compare the variants of each rollout):

* **Traffic split**: decisions per variant.
* **Disagreement rate**: share of decisions with a shadow result in which at least one
  compared dimension changed; per dimension too.
* **Top disagreements**: the (context, dimension) pairs that changed most.
* **Guarded metrics**: each guard's aggregate for baseline and candidate over the
  period, beside its threshold.
* **Recommendations**: rules over the numbers (below), each with its reason and the
  command to run, for the rollout's state at the end of the period.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_engine.consumers.rollback.policy import (
    DEFAULT_POLICY,
    QUALITY,
    Guard,
    PolicyError,
    load_policy,
)
from rollout_engine.engine.logtools.report_chart import guard_summary, render_chart
from rollout_engine.events import (
    AnyEvent,
    ConfigChange,
    ControlState,
    Decision,
    KillSwitch,
    Metric,
    Outcome,
    WouldKill,
    kind_of,
)

__all__ = ["RolloutWeek", "Samples", "WeeklyRollup", "recommendations", "render", "week_bounds"]

HIGH_DISAGREEMENT = 0.20
MIN_CANDIDATE_OUTCOMES = 30
QUALITY_MARGIN = 1.0
"""Quality points within which the candidate counts as on par with the baseline."""
SAMPLES_PER_SERIES = 2048
"""Bound on the points kept per (rollout, metric, variant): a chart needs no more."""
DAY_MS = 86_400_000


def week_bounds(week: str | None, now_ms: int) -> tuple[int, int, str]:
    """(start_ms, end_ms, label) of an ISO week (``2026-W47``), or of the 7 days up to
    ``now_ms``, labelled by their dates (``2026-11-25-to-2026-12-02``) so that the file
    name says which days it covers."""
    if week and week != "last":
        try:
            year, num = week.upper().split("-W")
            start = dt.datetime.fromisocalendar(int(year), int(num), 1).replace(tzinfo=dt.UTC)
        except ValueError:
            raise ValueError(f"week {week!r}: expected an ISO week such as 2026-W47, or 'last'") from None
        start_ms = int(start.timestamp() * 1000)
        return start_ms, start_ms + 7 * DAY_MS, f"{int(year)}-W{int(num):02d}"
    start_ms = now_ms - 7 * DAY_MS
    return start_ms, now_ms, f"{_day(start_ms)}-to-{_day(now_ms)}"


def _day(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def _minute(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


class Samples:
    """(time, value) points of one series, at most :data:`SAMPLES_PER_SERIES`.

    Every ``stride``-th value is kept and the stride doubles when the bound is reached:
    bounded memory for a week of traffic, and the same points on every replay.
    """

    __slots__ = ("seen", "stride", "times", "values")

    def __init__(self) -> None:
        self.times, self.values = array("q"), array("d")
        self.seen, self.stride = 0, 1

    def add(self, time_ms: int, value: float) -> None:
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        self.times.append(time_ms)
        self.values.append(value)
        if len(self.times) >= SAMPLES_PER_SERIES:
            self.times, self.values = self.times[::2], self.values[::2]
            self.stride *= 2


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
    samples: dict[tuple[str, str], Samples] = field(default_factory=dict)
    """(metric, variant) -> points; metric ``quality`` is ``Outcome.quality``."""
    kills: list[tuple[int, str, str, tuple[str, ...]]] = field(default_factory=list)
    """(time, actor, reason, guards that breached)."""
    reenabled: list[int] = field(default_factory=list)
    """Times of the commands that lifted the kill switch (resume, retry...)."""
    last_command: tuple[int, str, str, bool, float] | None = None
    """(time, kind, actor, kill switch on after it, canary % after it): the state at the end."""
    last_canary_pct: float | None = None
    guards: list[Guard] = field(default_factory=DEFAULT_POLICY.all_guards)

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    @property
    def killed(self) -> bool:
        """The kill switch is on at the end of the period."""
        return self.last_command is not None and self.last_command[3]

    def disagreement_rate(self) -> float | None:
        return self.disagreed / self.shadowed if self.shadowed else None

    def mean_quality(self, variant: str) -> float | None:
        n, total = self.quality.get(variant, [0.0, 0.0])
        return total / n if n else None

    def kill_guards(self) -> Counter[str]:
        return Counter(g for *_, guards in self.kills for g in guards)

    def _sample(self, metric: str, variant: str, time_ms: int, value: float) -> None:
        series = self.samples.get((metric, variant))
        if series is None:
            series = self.samples[(metric, variant)] = Samples()
        series.add(time_ms, value)


class WeeklyRollup:
    """Fold events of one period into per-rollout weeks (events outside are ignored,
    except rollback policies: a policy set before the period still guards it)."""

    def __init__(self, start_ms: int, end_ms: int, baseline: str = "baseline", candidate: str = "candidate") -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.baseline, self.candidate = baseline, candidate
        self.rollouts: dict[str, RolloutWeek] = {}
        self.policies: dict[str, tuple[int, list[Guard]]] = {}
        self.events = 0

    def _week(self, rollout: str) -> RolloutWeek:
        week = self.rollouts.get(rollout)
        if week is None:
            week = self.rollouts[rollout] = RolloutWeek(rollout)
            if rollout in self.policies:
                week.guards = self.policies[rollout][1]
        return week

    def add(self, event: AnyEvent) -> None:
        if event.rollout.startswith("_"):
            return
        if isinstance(event, ConfigChange) and event.policy is not None and event.time_ms < self.end_ms:
            self._policy(event)
        if not self.start_ms <= event.time_ms < self.end_ms:
            return
        if isinstance(event, Decision):
            self._decision(event)
        elif isinstance(event, Outcome):
            week = self._week(event.rollout)
            week.outcomes[(event.variant, event.verdict)] += 1
            if event.quality is not None:
                slot = week.quality.setdefault(event.variant, [0.0, 0.0])
                slot[0] += 1
                slot[1] += event.quality
                week._sample(QUALITY, event.variant, event.time_ms, event.quality)
        elif isinstance(event, Metric):
            self._week(event.rollout)._sample(event.name, event.variant, event.time_ms, event.value)
        elif isinstance(getattr(event, "after", None), ControlState) and not isinstance(event, WouldKill):
            week = self._week(event.rollout)  # a control command (kill, resume, config, ...): the state after it
            if isinstance(event, KillSwitch):
                guards = tuple(dict.fromkeys(b.guard for b in event.breaches))
                week.kills.append((event.time_ms, event.actor, event.reason, guards))
            before = getattr(event, "before", None)
            if before is not None and before.kill_switch and not event.after.kill_switch:
                week.reenabled.append(event.time_ms)
            if week.last_command is None or event.time_ms >= week.last_command[0]:
                week.last_command = (event.time_ms, kind_of(event), getattr(event, "actor", ""),
                                     event.after.kill_switch, event.after.canary_pct)
        else:
            return
        self.events += 1

    def _decision(self, event: Decision) -> None:
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

    def _policy(self, event: ConfigChange) -> None:
        """The latest valid policy of the rollout (an invalid one changed nothing live either)."""
        known = self.policies.get(event.rollout)
        if known is not None and known[0] > event.time_ms:
            return
        try:
            guards = load_policy(event.policy or {}, version=event.after.policy_version).all_guards()
        except PolicyError:
            return
        self.policies[event.rollout] = (event.time_ms, guards)
        if event.rollout in self.rollouts:
            self.rollouts[event.rollout].guards = guards

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name, week in sorted(self.rollouts.items()):
            out[name] = {
                "decisions": dict(week.decisions),
                "disagreement_rate": week.disagreement_rate(),
                "dimensions": dict(week.dimensions),
                "quality": {v: week.mean_quality(v) for v in sorted(week.quality)},
                "kills": [{"time_ms": t, "actor": a, "reason": r, "guards": list(g)} for t, a, r, g in week.kills],
                "killed": week.killed,
                "recommendations": recommendations(week, self.baseline, self.candidate),
            }
        return out


def recommendations(week: RolloutWeek, baseline: str = "baseline", candidate: str = "candidate") -> list[str]:
    """Rules over the week's numbers, each with its reason and, where one helps, the
    command to run for this rollout in its state at the end of the period."""
    name = week.rollout
    recs: list[str] = []
    if week.kills:
        when, actor, reason, _guards = week.kills[-1]
        by_guard = ", ".join(f"{g} {n}" for g, n in week.kill_guards().most_common()) or "manual"
        recs.append(f"WARN: {len(week.kills)} kill switch(es) this week ({by_guard}), the last at {_minute(when)} "
                    f"UTC by {actor}: {reason[:160]}.")
        if week.killed:
            recs.append(f"ACTION: the kill switch is still on. Read the breach numbers (`rollout status {name}`), "
                        f"fix the cause, then re-enable at 5% (`rollout resume {name} --canary-pct 5`).")
        elif week.last_command is not None:
            at, kind, by, _on, pct = week.last_command
            recs.append(f"INFO: re-enabled since ({kind} at {_minute(at)} UTC by {by}, canary {pct:g}%); "
                        "watch the guards that fired on the chart before the next step.")
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
                        + (f"consider the next canary step (`rollout set {name} --canary-pct N`)."
                           if pct is None or pct < 100 else "fully rolled out."))
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
             f"**Period:** {_minute(rollup.start_ms)} to {_minute(rollup.end_ms)} UTC (event time)  ",
             f"**Rollouts:** {len(rollup.rollouts)}  ",
             f"**Events counted:** {rollup.events}", ""]
    if chart_name:
        lines += [f"![Guarded metrics per rollout, baseline vs candidate, thresholds and kill switches]({chart_name})", ""]
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
        summary = guard_summary(week, rollup.baseline, rollup.candidate)
        if summary:
            lines += ["", "### Guarded metrics", ""]
            lines += _table(summary, ("Guard", "Measure", rollup.baseline, rollup.candidate, "Fails when"))
        lines += ["", "### Quality"]
        for variant in sorted(week.quality):
            n = int(week.quality[variant][0])
            lines.append(f"- {variant}: mean {week.mean_quality(variant):.2f} over {n} outcomes")
        if week.kills:
            lines += ["", "### Kill switches", ""]
            lines += _table([(dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S"), a,
                              ", ".join(g) or "-", r[:200]) for t, a, r, g in week.kills],
                            ("Time (UTC)", "Actor", "Guards", "Reason"))
        lines += ["", "### Recommendations"]
        lines += [f"- {r}" for r in recommendations(week, rollup.baseline, rollup.candidate)]
        lines += ["", "### Actions",
                  "- [ ] Review the top disagreements for correctness",
                  "- [ ] Compare baseline and candidate on each guarded metric in the chart",
                  f"- [ ] Decide the next canary step (`rollout set {name} --canary-pct N`)", ""]
    return "\n".join(lines)


def render(rollup: WeeklyRollup, label: str, out_dir: str | Path, now_ms: int | None = None) -> tuple[Path, Path]:
    """Write ``report-<label>.md`` and ``report-<label>.png`` into ``out_dir``.

    ``now_ms`` (default: the end of the period) bounds the chart's time axis, so a
    period that ends in the future is drawn up to now.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = render_chart(rollup, out / f"report-{label}.png", now_ms=now_ms)
    markdown = out / f"report-{label}.md"
    markdown.write_text(render_markdown(rollup, label, chart.name))
    return markdown, chart
