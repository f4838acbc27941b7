"""The weekly report: a pure rollup, the chart's inputs, recommendations, Markdown and a real PNG."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgspec

from rollout_engine.engine.logtools.report import (
    WeeklyRollup,
    recommendations,
    render,
    render_markdown,
    week_bounds,
)
from rollout_engine.engine.logtools.report_chart import panels
from rollout_engine.events import (
    Breach,
    ConfigChange,
    ControlState,
    Decision,
    KillSwitch,
    Metric,
    Outcome,
    Resume,
    ShadowResult,
)

T0 = 1_763_942_400_000  # 2025-11-24 00:00 UTC, a Monday
HOUR = 3_600_000


def _decision(i: int, variant: str, changed: bool, context: str = "inbox") -> Decision:
    return Decision(id=f"d{i}", rollout="planner", time_ms=T0 + i * 60_000, producer="svc", unit=f"u{i}",
                    variant=variant, reason="canary" if variant == "candidate" else "default", canary_pct=20.0,
                    config_version=1, propensity=0.2, context=context,
                    shadow=ShadowResult(variant="baseline" if variant == "candidate" else "candidate",
                                        diff={"agent": changed, "steps": False}))


def _outcome(i: int, variant: str, quality: float) -> Outcome:
    return Outcome(id=f"o{i}", rollout="planner", time_ms=T0 + i * 60_000, producer="svc", decision_id=f"d{i}",
                   variant=variant, verdict="neutral", quality=quality)


def _week(kill: bool = True) -> WeeklyRollup:
    rollup = WeeklyRollup(T0, T0 + 7 * 24 * HOUR)
    for i in range(600):
        variant = "candidate" if i % 5 == 0 else "baseline"
        rollup.add(_decision(i, variant, changed=i % 4 == 0, context="triage" if i % 12 == 0 else "inbox"))
        quality = 95.0 if variant == "baseline" else (94.0 if i < 300 else 80.0)
        rollup.add(_outcome(i, variant, quality))
    if kill:
        rollup.add(KillSwitch(id="k1", rollout="planner", time_ms=T0 + 320 * 60_000, producer="rollback",
                              actor="rollback", reason="quality (baseline: 95.0, candidate: 80.0, drop: 15.0)",
                              before=ControlState(canary_pct=20), after=ControlState(kill_switch=True)))
    rollup.add(_decision(10_000_000, "baseline", False))  # outside the week: ignored
    return rollup


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    crc = struct.unpack(">I", data[29:33])[0]
    assert zlib.crc32(data[12:29]) == crc, "IHDR checksum"
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def test_rollup_counts_split_disagreement_and_quality() -> None:
    rollup = _week()
    week = rollup.rollouts["planner"]
    assert week.decisions == {"baseline": 480, "candidate": 120}
    assert week.shadowed == 600 and week.disagreed == 150 and week.disagreement_rate() == 0.25
    assert week.top.most_common(1)[0] == (("inbox", "agent"), 100)
    assert week.mean_quality("baseline") == 95.0
    assert len(week.kills) == 1


def test_recommendations_follow_the_numbers() -> None:
    killed = recommendations(_week().rollouts["planner"])
    assert any("kill switch" in r and "--canary-pct 5" in r for r in killed)
    assert any("disagree" in r for r in killed)
    healthy = WeeklyRollup(T0, T0 + 7 * 24 * HOUR)
    for i in range(200):
        variant = "candidate" if i % 2 else "baseline"
        healthy.add(_decision(i, variant, changed=False))
        healthy.add(_outcome(i, variant, 95.0))
    assert any(r.startswith("OK") and "next canary step" in r for r in recommendations(healthy.rollouts["planner"]))
    sparse = WeeklyRollup(T0, T0 + 7 * 24 * HOUR)
    sparse.add(_outcome(1, "candidate", 90.0))
    assert any("too few" in r for r in recommendations(sparse.rollouts["planner"]))


def test_report_renders_markdown_and_a_valid_png(tmp_path: Path) -> None:
    markdown, chart = render(_week(), "2025-W48", tmp_path)
    text = markdown.read_text()
    for section in ("## planner", "### Traffic split", "Disagreement rate: 25.0%", "### Top disagreements",
                    "| `inbox` | `agent` | 100 |", "### Kill switches", "### Recommendations", "](report-2025-W48.png)"):
        assert section in text, section
    width, height = _png_size(chart)
    assert 600 <= width <= 3000 and 200 <= height <= 3000
    assert 10_000 < chart.stat().st_size < 2_000_000


def test_an_empty_week_still_renders(tmp_path: Path) -> None:
    markdown, chart = render(WeeklyRollup(T0, T0 + 7 * 24 * HOUR), "empty", tmp_path)
    assert "No rollout activity" in markdown.read_text()
    assert _png_size(chart)[0] >= 600


def test_week_bounds() -> None:
    start, end, label = week_bounds("2025-W48", 0)
    assert (start, end - start, label) == (T0, 7 * 24 * HOUR, "2025-W48")
    start, end, _ = week_bounds("last", T0)
    assert end == T0 and end - start == 7 * 24 * HOUR
    assert msgspec.json.encode(_week().to_dict())


def _traffic(rollup: WeeklyRollup, rollout: str, t0: int, seconds: int, bad_from: int | None = None) -> None:
    """Twenty requests a second, every second one on the candidate; the candidate's latency
    doubles from ``bad_from`` while its quality stays within 0.02 of the baseline's."""
    for i in range(seconds * 20):
        t, variant = t0 + i * 50, "candidate" if i % 2 else "baseline"
        slow = variant == "candidate" and bad_from is not None and t >= bad_from
        rollup.add(Metric(id=f"{rollout}m{i}", rollout=rollout, time_ms=t, producer="svc", variant=variant,
                          name="latency_ms", value=(2000.0 if slow else 1000.0) + i % 7, unit="ms"))
        rollup.add(Outcome(id=f"{rollout}o{i}", rollout=rollout, time_ms=t, producer="svc", decision_id=f"d{i}",
                           variant=variant, verdict="neutral", quality=92.0 + (0.017 if i % 2 else 0.0)))


def _kill(rollout: str, t: int, guard: str = "latency") -> KillSwitch:
    return KillSwitch(id=f"k-{rollout}-{t}", rollout=rollout, time_ms=t, producer="rollback", actor="rollback",
                      reason=guard, before=ControlState(canary_pct=50), after=ControlState(kill_switch=True),
                      breaches=[Breach(guard=guard, observed=2000.0, threshold=1600.0)])


def test_the_chart_plots_each_guarded_metric_with_its_threshold_over_each_rollouts_own_span() -> None:
    start, end, _ = week_bounds("2025-W48", 0)
    now = T0 + 2 * 24 * HOUR  # mid-week: the period runs past now
    rollup = WeeklyRollup(start, end)
    _traffic(rollup, "short", now - 60_000, 20, bad_from=now - 50_000)  # a 20-second rollout, killed for latency
    rollup.add(_kill("short", now - 45_000))
    _traffic(rollup, "long", T0, 4)
    rows = {row[0].rollout: row for row in panels(rollup, now_ms=now)}
    short = {p.guard.name: p for p in rows["short"]}
    assert list(short) == ["quality", "latency"]  # cost has no data: no panel
    latency, quality = short["latency"], short["quality"]
    assert {v for _, v in latency.limit} == {1600.0}
    base = dict(quality.series["baseline"])
    assert all(v == base[t] - 5.0 for t, v in quality.limit)  # quality fails at baseline - 5
    assert latency.kills == [(now - 45_000, ("latency",))]
    assert latency.bucket_ms <= 1000 and len(latency.series["candidate"]) >= 10  # a line, not a dot
    assert max(v for _, v in latency.series["candidate"]) >= 2000 > 1600 > min(v for _, v in latency.series["candidate"])
    assert latency.xlim[1] <= now and quality.xlim[1] <= now  # never past now
    assert quality.ylim[0] < base[quality.limit[0][0]] - 5.0 and quality.ylim[1] > 92.017  # 0.017 is not full height
    assert rows["long"][0].xlim[0] >= T0 - rows["long"][0].bucket_ms and rows["long"][0].xlim[1] <= T0 + 5_000


def test_a_policy_set_before_the_period_gives_the_thresholds() -> None:
    rollup = WeeklyRollup(T0, T0 + 7 * 24 * HOUR)
    rollup.add(ConfigChange(id="c1", rollout="strict", time_ms=T0 - 3 * 24 * HOUR, producer="api", actor="alice",
                            reason="tighter", before=ControlState(), after=ControlState(canary_pct=5, policy_version=2),
                            policy={"thresholds": {"max_latency_p95_ms": 900.0, "max_cost_cents": -1}}))
    _traffic(rollup, "strict", T0 + HOUR, 5)
    latency = next(p for p in panels(rollup)[0] if p.guard.name == "latency")
    assert {v for _, v in latency.limit} == {900.0}


def test_recommendations_know_a_resumed_rollout_and_name_it() -> None:
    rollup = WeeklyRollup(T0, T0 + 7 * 24 * HOUR)
    _traffic(rollup, "checkout", T0, 10, bad_from=T0)
    rollup.add(_kill("checkout", T0 + 5_000))
    killed = recommendations(rollup.rollouts["checkout"])
    assert any("rollout resume checkout --canary-pct 5" in r for r in killed)
    assert any("(latency 1)" in r for r in killed)
    rollup.add(Resume(id="r1", rollout="checkout", time_ms=T0 + HOUR, producer="api", actor="alice", reason="fixed",
                      before=ControlState(kill_switch=True), after=ControlState(canary_pct=5)))
    resumed = recommendations(rollup.rollouts["checkout"])
    assert not any("rollout resume" in r for r in resumed) and any("re-enabled since" in r for r in resumed)
    assert "ROLLOUT" not in render_markdown(rollup, "x", None)


def test_the_file_name_says_which_days_it_covers() -> None:
    start, end, label = week_bounds("last", T0 + 12 * HOUR)
    assert label == "2025-11-17-to-2025-11-24" and (start, end) == (T0 + 12 * HOUR - 7 * 24 * HOUR, T0 + 12 * HOUR)
