"""``rollout ticks``: provision the streams, then publish engine ticks, on an external NATS.

``rollout up`` does both for its embedded server. Against a server of your own (the
compose stack, a cluster) this command is the engine's clock: it creates what is
missing (streams, KV bucket; idempotent, never overwriting operator tuning) and publishes
a ``Tick`` on ``ro.tick`` every ``tick_interval_ms`` until SIGTERM or Ctrl-C. Ticks
carry deterministic ids, published under the engine's keyed message ids, so two of
these sharing the key (an HA pair; ``msg_id_key_file``) de-duplicate each other.
With ``metrics_port`` set (``ROLLOUT_METRICS_PORT``) it also serves the engine's
log-derived Prometheus metrics (lag, dead letters, kill switches, breaches, detection
latency) on ``http://HOST:PORT/metrics``, as ``rollout up`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.cli.common import handler, settings_from, stop_on_signals
from rollout_engine.engine.stack.metrics import serve_metrics
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.ticks import run_ticks

__all__ = ["register"]

log = logging.getLogger("rollout.ticks")


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    nc = await connect(settings, name="rollout-ticks")
    js = nc.jetstream()
    for action in await provision(js, settings):
        log.info(action)
    if args.provision_only:
        print("rollout ticks: streams provisioned; no ticks published (--provision-only)", flush=True)
        await nc.drain()
        return 0
    print(f"rollout ticks: streams provisioned; a tick every {settings.tick_interval_ms} ms on ro.tick", flush=True)
    tasks = [asyncio.create_task(run_ticks(js, settings.tick_interval_ms, stop, EngineIds.load(settings)))]
    if settings.metrics_port:
        tasks.append(asyncio.create_task(serve_metrics(js, settings.metrics_port, stop, host=settings.host)))
    await asyncio.gather(*tasks)
    await nc.drain()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("ticks", help="provision streams, then publish engine ticks (external NATS)",
                            description=__doc__)
    parser.add_argument("--provision-only", action="store_true", help="create what is missing, then exit")
    parser.set_defaults(handler=handler(_run))
