"""A fleet of SDK instances in one process: ``python -m bench.fleet --clients N ...``.

Each instance is a ``RolloutClient`` following the control subjects and acknowledging
the revisions it applies, as a service replica would (it records no traffic). The
process prints one JSON line ``{"ready": true, "pid": ..., "instances": [...]}`` once every
client has read the control log, then runs until SIGTERM or SIGINT and closes them (a
SIGKILL leaves their acknowledgements to go stale). The propagation benchmark and the
propagation integration test start several of these.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile

from rollout_engine.engine.cli.common import run
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import load_settings

__all__ = ["main"]


async def serve(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rollout-fleet-") as tmp:
        settings = load_settings(env={}, nats_url=args.nats_url, data_dir=tmp, ack_ttl_s=args.ack_ttl)
        clients = [RolloutClient(settings, producer=args.service, outbox_path=f"{tmp}/outbox-{i}.sqlite")
                   for i in range(args.clients)]
        for start in range(0, len(clients), 10):  # ten at a time: a burst of 50 connects is a storm
            await asyncio.gather(*(c.start() for c in clients[start:start + 10]))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready = {"ready": True, "pid": os.getpid(), "instances": [c._acks.instance for c in clients]}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        await stop.wait()
        await asyncio.gather(*(c.close(2.0) for c in clients))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--service", default="fleet")
    parser.add_argument("--ack-ttl", type=float, default=30.0, help="ack_ttl_s of every client (seconds)")
    return run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
