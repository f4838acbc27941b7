"""The weekly report: a pure rollup, recommendations, Markdown and a real PNG chart."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgspec

from rollout_engine.engine.logtools.report import WeeklyRollup, recommendations, render, week_bounds
from rollout_engine.events import ControlState, Decision, KillSwitch, Outcome, ShadowResult

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
