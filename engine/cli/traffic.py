"""``rollout traffic``: a synthetic service sending requests through the SDK, on any NATS.

The compose stack's demo producer (``rollout demo`` runs its own embedded stack). It
serves ``--rate`` requests per second for ROLLOUT with ``RolloutClient``: each request is
assigned a variant by the live control state, served by the seeded synthetic planner of
``rollout demo``, and recorded (latency and cost metrics, an outcome with quality). After
``--degrade-after`` seconds the candidate turns bad (latency x2.6, quality -14), so a
canary started with ``rollout set ROLLOUT --canary-pct 5 --create`` ends in a kill switch.
Needs the ``app`` role in secure mode (it records events and follows control state).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from engine.cli.common import handler, settings_from

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    from engine.client import RolloutClient
    from engine.demo import SyntheticService

    settings = settings_from(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    service = SyntheticService(seed=args.seed)
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
