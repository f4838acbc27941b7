"""``rollout api``: run the operator API service (``ro.api.*``) in the foreground.

``rollout up`` runs it as a supervised child; start more instances anywhere with a
connection to the same NATS to share the load (they form one queue group). With
``gate_port`` set it also serves the deployment gate for Argo Rollouts and Flagger
(HTTP, read-only: ``engine/api/gate.py``, docs/integrations.md).
"""

from __future__ import annotations

import argparse
import asyncio

from rollout_engine.engine.api.client import ENDPOINTS
from rollout_engine.engine.api.gate import start_gate
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    settings_from,
    stop_on_signals,
)
from rollout_engine.engine.settings import SettingsError
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys
from rollout_engine.events import subjects

__all__ = ["register"]


async def _run(args: argparse.Namespace) -> int:
    # The service loads the statistics libraries: imported when the API runs, not for `rollout --help`.
    from rollout_engine.engine.api.service import serve_api

    settings = settings_from(args)
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    nc = await connect(settings, name="rollout-api")
    ready = asyncio.Event()
    signer = CommandSigner.load(settings)
    await publish_keys(nc.jetstream(), signer.ring)  # on an external NATS no `rollout up` did it
    task = asyncio.create_task(serve_api(nc, stop, ready, msg_ids=EngineIds.load(settings), signer=signer))
    await ready.wait()
    try:
        gate = await start_gate(nc.jetstream(), settings)
    except SettingsError as exc:
        stop.set()
        await task
        await nc.drain()
        raise CliError(str(exc)) from None
    gate_url = f"http://{settings.gate_host}:{gate.port}" if gate else None
    if args.json:
        print_json({"service": "rollout-api", "serving": [subjects.api(name) for name in ENDPOINTS], "gate": gate_url})
    else:
        print(f"rollout api: serving {', '.join(ENDPOINTS)} on {subjects.API_ALL}"
              + (f"; deployment gate on {gate_url}" if gate_url else ""), flush=True)
    await task
    if gate is not None:
        await gate.close()
    await nc.drain()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("api", help="run the operator API service", description=__doc__)
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
