"""``rollout demo``: watch the engine kill a degrading candidate (about 20 s, under 60 s)."""

from __future__ import annotations

import argparse

from rollout_engine.engine.cli.common import color, handler, print_json, settings_from
from rollout_engine.engine.cli.up import serve
from rollout_engine.engine.stack.demo import run_demo

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    data_dir = settings.data_path / "demo"
    quiet = args.json
    result = await run_demo(data_dir, serve, out=(lambda _line: None) if quiet else print)
    if args.json:
        print_json(result)
        return 0 if result.killed else 1
    print()
    if not result.killed:
        print(color("demo: the engine did not kill the candidate", "31"))
        return 1
    print(color("summary", "1"))
    print(f"  kill switch fired: {result.reason}")
    for breach in result.breaches:
        samples = f"candidate n={breach['candidate_n']}"
        if breach.get("baseline") is not None:  # absolute guards judge the candidate alone
            samples += f", baseline n={breach['baseline_n']}"
        print(f"    {breach['guard']}: observed {breach['observed']:.1f} vs threshold {breach['threshold']:.1f} "
              f"({samples})")
    print(f"  detection latency: {result.detection_latency_ms:.0f} ms from the first degraded request "
          f"to the service obeying the kill switch")
    if result.event_time_latency_ms is not None:
        print(f"  in event time: {result.event_time_latency_ms:.0f} ms from degradation to the kill command")
    print(f"  candidate requests served after the kill: {result.served_candidate_after_kill}")
    if result.applied is not None:
        from rollout_engine.engine.stack.demo_acks import applied_line

        print(f"  {applied_line(result.applied)} (every instance acknowledged it: docs/sdk.md)")
    served = result.served
    print(f"  requests served: {result.requests} (baseline {served.get('baseline', 0)}, "
          f"candidate {served.get('candidate', 0)}); demo took {result.seconds:.1f} s")
    print(f"  weekly report: {result.report} (chart {result.chart})")
    print(f"  metrics were served at {result.metrics_url} while the demo ran (`rollout up --metrics-port` "
          "serves them for a stack you keep)")
    print(f"  the log is kept in {data_dir}: `rollout --data-dir {data_dir} up` to explore it")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("demo", help="watch the engine kill a degrading candidate", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of live lines")
    parser.set_defaults(handler=handler(_run))
