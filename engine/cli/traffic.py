"""``rollout traffic``: a synthetic service sending requests through the SDK, on any NATS.

The compose stack's demo producer (``rollout demo`` runs its own embedded stack). It
serves ``--rate`` requests per second for ROLLOUT with ``RolloutClient``: each request is
assigned a variant by the live control state, served by the seeded synthetic planner of
``rollout demo``, and recorded (latency and cost metrics, an outcome with quality). After
``--degrade-after`` seconds the candidate turns bad (latency x2.6, quality -14), so a
canary started with ``rollout set ROLLOUT --canary-pct 5 --create`` ends in a kill switch.
Needs the ``app`` role in secure mode (it records events and follows control state).
With ``metrics_port`` set it serves ``/metrics`` as a real service would: the SDK's
``rollout_selection_total`` (traffic split) and this service's own latency and quality
histograms by variant, which the compose dashboard plots baseline against candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from rollout_engine.engine.cli.common import handler, settings_from, stop_on_signals
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.stack.demo import SyntheticService

if TYPE_CHECKING:
    from prometheus_client import Histogram

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    service = SyntheticService(seed=args.seed)
    latency_h, quality_h = _service_metrics(settings.metrics_port, settings.host)
    start = time.monotonic()
    served = 0
    async with RolloutClient(settings, producer=args.producer, allow_offline=True) as client:
        print(f"rollout traffic: {args.rate}/s for {args.rollout}; candidate degrades after "
              f"{args.degrade_after:.0f}s", flush=True)
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if args.seconds and elapsed >= args.seconds:
                break
            service.degraded = args.degrade_after >= 0 and elapsed >= args.degrade_after
            for _ in range(max(1, args.rate // 10)):
                decision = client.decide(args.rollout, f"user-{service.rng.randrange(100_000)}")
                latency, cost, quality, verdict = service.serve(decision.variant)
                latency_h.labels(args.rollout, decision.variant).observe(latency / 1000)
                quality_h.labels(args.rollout, decision.variant).observe(quality)
                await client.record_metric(args.rollout, decision.variant, "latency_ms", latency, unit="ms",
                                           decision_id=decision.id)
                await client.record_metric(args.rollout, decision.variant, "cost_cents", cost, unit="cents",
                                           decision_id=decision.id)
                await client.record_outcome(args.rollout, decision.id, decision.variant, verdict, quality=quality)
                served += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        await client.flush(10)
    print(f"rollout traffic: served {served} requests", flush=True)
    return 0


def _service_metrics(port: int, host: str) -> tuple[Histogram, Histogram]:
    """The synthetic service's own telemetry; served on ``port`` when it is not 0."""
    from prometheus_client import Histogram, start_http_server

    latency = Histogram("rollout_traffic_latency_seconds", "Latency of the synthetic service's requests, by variant.",
                        ["rollout", "variant"], buckets=(0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0))
    quality = Histogram("rollout_traffic_quality", "Quality score (0-100) of the synthetic service's answers, by variant.",
                        ["rollout", "variant"], buckets=(60, 70, 75, 80, 85, 90, 95, 100))
    if port:
        start_http_server(port, addr=host)
    return latency, quality


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("traffic", help="synthetic service traffic through the SDK (compose demo producer)",
                            description=__doc__)
    parser.add_argument("rollout", help="rollout id, e.g. checkout-v2")
    parser.add_argument("--rate", type=int, default=100, help="requests per second (default 100)")
    parser.add_argument("--degrade-after", type=float, default=60.0,
                        help="seconds before the candidate degrades; negative: never (default 60)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: run until stopped)")
    parser.add_argument("--producer", default="traffic", help="producer name recorded on events")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic service")
    parser.set_defaults(handler=handler(_run))
