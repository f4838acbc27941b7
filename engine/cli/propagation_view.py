"""The ``applied`` lines of ``rollout status`` and ``rollout wait --applied``: which SDK
instances applied the rollout's current control revision, how fast, and which did not.

It renders the ``propagation`` section the API builds (engine/api/propagation.py) and
never trusts its text: host names and ids come from instances and are sanitized.
"""

from __future__ import annotations

from typing import Any

from rollout_engine.engine.cli.common import color, sanitize

__all__ = ["MAX_LINES", "propagation_lines"]

MAX_LINES = 20
"""Instances listed in text (lagging and stale first); ``--json`` lists them all."""


def propagation_lines(section: Any) -> list[str]:
    """Text lines for a ``propagation`` section; none when there is no section."""
    if not isinstance(section, dict):
        return []
    command = sanitize(str(section.get("command") or "default state"))
    summary = sanitize(str(section.get("summary", "")), 400)
    lagging = int(section.get("lagging") or 0)
    head = f"applied {command} at seq {section.get('revision', 0)}: "
    lines = [head + (color(summary, "33") if lagging else summary)]
    instances = [i for i in section.get("instances") or [] if isinstance(i, dict)]
    for item in instances[:MAX_LINES]:
        lines.append("  " + _instance_line(item))
    hidden = len(instances) - MAX_LINES + int(section.get("instances_not_listed") or 0)
    if hidden > 0:
        lines.append(f"  ... {hidden} more (--json lists them)")
    return lines


def _instance_line(item: dict[str, Any]) -> str:
    status = str(item.get("status", "?"))
    label = {"applied": "applied", "lagging": color("LAGGING", "31"), "stale": color("stale", "90")}.get(status, status)
    who = sanitize(f"{item.get('service', '?')}/{item.get('instance', '?')}", 80)
    where = sanitize(f"{item.get('host', '')} pid {item.get('pid', 0)}", 80)
    latency = item.get("latency_ms")
    took = f"{latency:.1f} ms" if isinstance(latency, int | float) else "at start-up"
    seen = f"seen {item.get('seen_s_ago', 0):.1f} s ago"
    detail = took if status == "applied" else seen
    return f"{who:<40} {label:<8} rev {item.get('revision', 0):<8} {detail:<16} {where}"
