"""``rollout report --week``: the weekly rollup as Markdown with a PNG chart.

Reads a week of the log from the stream or from an export (``--file``) and writes
``report-<period>.md`` and ``report-<period>.png`` into ``--out`` (default
DATA_DIR/reports). The period names the files: ``--week`` alone covers the 7 days up to
now (``report-2026-11-25-to-2026-12-02``), ``--week 2026-W47`` that ISO week, Monday to
Monday (``report-2026-W47``). The chart plots every metric the rollout's rollback policy
guards, with its threshold.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    settings_from,
)
from rollout_engine.engine.logtools.export import ExportError
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.logtools.replay import messages_from_file
from rollout_engine.engine.logtools.report import WeeklyRollup, render, week_bounds
from rollout_engine.events import subjects

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    now = int(time.time() * 1000)
    try:
        start, end, label = week_bounds(args.week, now)
    except ValueError as exc:
        raise CliError(str(exc), "invalid") from None
    rollup = WeeklyRollup(start, end)
    settings = settings_from(args)
    if args.file:
        try:
            messages = messages_from_file(args.file)[1]
        except ExportError as exc:
            raise CliError(str(exc)) from None
        for message in messages:
            for event in events_of(message):
                rollup.add(event)
    else:
        nc = await connect(settings, name="rollout-report", reconnect=False)
        since = start - 86_400_000  # store time can trail event time by the producers' outbox delays: a day more
        try:
            # Policies set before the period still guard it: the control subjects before it (few messages).
            async for msg in read_messages(nc.jetstream(), [subjects.CONTROL_ALL], until_ms=since - 1):
                for event in events_of(msg):
                    rollup.add(event)
            async for msg in read_messages(nc.jetstream(), [subjects.EVENTS_ALL, subjects.CONTROL_ALL], since_ms=since):
                for event in events_of(msg):
                    rollup.add(event)
        finally:
            await nc.close()
    out = Path(args.out) if args.out else settings.data_path / "reports"
    markdown, chart = render(rollup, label, out, now_ms=now)
    if args.json:
        print_json({"week": label, "start_ms": start, "end_ms": end, "markdown": str(markdown), "chart": str(chart),
                    "events": rollup.events, "rollouts": rollup.to_dict()})
    else:
        print(f"weekly report {label}: {markdown} (chart {chart}); {len(rollup.rollouts)} rollouts, "
              f"{rollup.events} events")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("report", help="weekly rollup: traffic split, disagreement, recommendations, chart",
                            description=__doc__)
    parser.add_argument("--week", nargs="?", const="last", default="last", metavar="YYYY-Www",
                        help="the 7 days up to now (default), or an ISO week such as 2026-W47 (Monday to Monday, UTC)")
    parser.add_argument("--file", help="read an export instead of the stream")
    parser.add_argument("--out", help="output directory (default DATA_DIR/reports)")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
