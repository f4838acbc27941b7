"""``rollout api``: run the operator API service (``ro.api.*``) in the foreground.

``rollout up`` runs it as a supervised child; start more instances anywhere with a
connection to the same NATS to share the load (they form one queue group).
"""

from __future__ import annotations

import argparse
import asyncio

from rollout_engine.engine.api.service import ENDPOINTS, serve_api
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    add_json_flag,
    handler,
    print_json,
    settings_from,
    stop_on_signals,
)

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    nc = await connect(settings, name="rollout-api")
    ready = asyncio.Event()
    task = asyncio.create_task(serve_api(nc, stop, ready))
    await ready.wait()
    if args.json:
        print_json({"service": "rollout-api", "serving": [f"ro.api.{name}" for name in ENDPOINTS]})
    else:
        print(f"rollout api: serving {', '.join(ENDPOINTS)} on ro.api.*", flush=True)
    await task
    await nc.drain()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("api", help="run the operator API service", description=__doc__)
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
