"""``rollout up``: the embedded stack in the foreground; Ctrl-C stops all of it.

Starts the bundled nats-server with JetStream (or, with ``--cluster N``, N nodes),
provisions streams and the KV bucket, publishes engine ticks, and runs every registered
consumer as its own process (the rollback consumer with a warm standby). The server(s),
consumers and the API are supervised children: each one that dies is started again at
once (engine/stack/supervisor.py). The server URL is written to DATA_DIR/nats.url so
other shells (``rollout status``) find it. ``--secure`` combines with ``--cluster`` and
``--partitions``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from rollout_engine.consumers import registry
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.cli.common import CliError, handler, settings_from, stop_on_signals
from rollout_engine.engine.cli.secure import SecureMode, add_up_flags, prepare
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.cluster import EmbeddedCluster
from rollout_engine.engine.stack.health import publish_supervisor
from rollout_engine.engine.stack.metrics import MULTIPROC_ENV, multiprocess_env, serve_metrics
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.partitioning import log_partitions
from rollout_engine.engine.stack.server import EmbeddedServer, ServerError, is_loopback
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys
from rollout_engine.engine.stack.supervisor import Child, NodeChild, Supervisor, SupervisorMetrics
from rollout_engine.engine.stack.ticks import run_ticks

__all__ = ["register", "serve"]

_say = functools.partial(print, flush=True)

log = logging.getLogger("rollout.up")


async def serve(
    args: argparse.Namespace,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = _say,
    log_dir: Path | None = None,
) -> int:
    """Run the stack until ``stop`` is set or SIGINT/SIGTERM arrives."""
    settings = settings_from(args, port=args.port, host=args.host, secure=getattr(args, "secure", None),
                             partitions=getattr(args, "partitions", None),
                             metrics_port=getattr(args, "metrics_port", None))
    secure = prepare(settings, tls=getattr(args, "tls", False))  # None unless --secure (docs/security.md)
    if secure is not None:
        settings = secure.engine_settings(settings)
    if not settings.secure and not is_loopback(settings.host):
        raise CliError(f"refusing to bind {settings.host} without credentials: the embedded server binds "
                       "loopback only unless you run `rollout up --secure` (docs/security.md)")
    stop = stop or asyncio.Event()
    stop_on_signals(stop.set)
    if args.cluster:
        # R3 needs three nodes; a 1- or 2-node trial cluster replicates to all it has.
        settings = msgspec.structs.replace(settings, replicas=min(3, args.cluster))
    server = _server(args, settings, secure)
    began = time.monotonic()
    say(f"rollout up: starting nats-server ({f'{args.cluster} nodes' if args.cluster else 'embedded'}, "
        f"data in {settings.data_dir})")
    try:
        await asyncio.to_thread(server.start)
    except ServerError as exc:
        raise CliError(str(exc)) from None
    say(f"rollout up: nats-server ready at {server.url} in {time.monotonic() - began:.1f} s")
    nodes = server.nodes if isinstance(server, EmbeddedCluster) else [server]
    node_children: list[Child] = [NodeChild(node.name if len(nodes) > 1 else "nats-server", node) for node in nodes]
    for child in node_children:
        child.adopt()  # type: ignore[attr-defined]
    supervisor = Supervisor(node_children)
    try:
        settings.url_file.parent.mkdir(parents=True, exist_ok=True)
        settings.url_file.write_text(server.url + "\n")
        nc = await connect(settings, url=server.url, name="rollout-up")
        js = nc.jetstream()
        actions = await provision(js, settings)
        for action in actions:
            log.info(action)
        say(f"rollout up: streams and KV {'provisioned' if actions else 'already in place'}")
        # Before any engine process runs: services verify control commands with this ring.
        await publish_keys(js, CommandSigner.load(settings).ring)
        if secure is not None and secure.cover_partitions(settings, await log_partitions(js)):
            server.reload()  # readers are now denied the durables of every partition the log has
        names = [] if args.no_consumers else _consumer_names()
        metrics_env = multiprocess_env(settings.data_dir) if settings.metrics_port else {}
        child_env = {"ROLLOUT_NATS_URL": server.url, **(secure.child_env() if secure else {}), **metrics_env}
        engine_cli = [sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(settings.data_dir)]
        for name in names:
            supervisor.add(Child(name, [*engine_cli, "consumer", name, *_owned(settings.partitions)], env=child_env,
                                 instances=1 + STANDBYS.get(name, 0), standby_argv=["--standby"],
                                 nice=NICE.get(name, 0)))
        supervisor.add(Child("api", [*engine_cli, "api"], env=child_env))
        if log_dir is not None:
            for child in supervisor.children[len(node_children):]:
                child.log_file = log_dir / f"{child.name}.log"
        supervisor.start()
        say(f"rollout up: started {len(names)} consumer processes ({', '.join(names) or 'none'}) and the "
            f"operator API; R{settings.replicas}; Ctrl-C stops all")
        if secure is not None:
            say(secure.describe())
        if ready is not None:
            ready.set()
        ticks = asyncio.create_task(run_ticks(js, settings.tick_interval_ms, stop, EngineIds.load(settings)))
        watch = asyncio.create_task(supervisor.watch(stop))
        health = asyncio.create_task(publish_supervisor(js, supervisor, stop))
        serving = asyncio.Event()
        exporter = asyncio.create_task(serve_metrics(js, settings.metrics_port, stop, host=settings.host,
                                                     multiproc_dir=metrics_env.get(MULTIPROC_ENV), ready=serving,
                                                     collectors=(SupervisorMetrics(supervisor),)))
        if settings.metrics_port:
            # a taken metrics port stops `rollout up` with one line, rather than no metrics
            await asyncio.wait({exporter, asyncio.create_task(serving.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if exporter.done():
                exporter.result()
            say(f"rollout up: Prometheus metrics at http://{settings.host}:{settings.metrics_port}/metrics")
        else:
            exporter.cancel()
            say("rollout up: Prometheus metrics off (serve them with --metrics-port 9464 or ROLLOUT_METRICS_PORT)")
        await stop.wait()
        await asyncio.gather(ticks, watch, health, exporter, return_exceptions=True)
        await nc.drain()
    finally:
        await asyncio.to_thread(supervisor.stop)
        await asyncio.to_thread(server.stop)
        with contextlib.suppress(FileNotFoundError):
            settings.url_file.unlink()
        say("rollout up: stopped")
    return 0


STANDBYS = {"rollback": 1}
"""Warm standbys per consumer: the rollback consumer (the kill path) has one, so a crash of
its process costs the time to take a lock, not a Python start (docs/reliability.md)."""

NICE = {"canary_stats": 5, "bandit": 5, "verification": 5, "notifier": 5}
"""Niceness of the bulk consumers: none of them is on the kill path, and each folds the
same log as the rollback consumer, so on a busy host they yield the CPU to it (and to
``control``) rather than share it evenly (docs/scaling.md, "The kill path on a busy host")."""


def _server(args: argparse.Namespace, settings: Settings, secure: SecureMode | None) -> EmbeddedServer | EmbeddedCluster:
    """One embedded server, or an N-node cluster; with credentials in secure mode (routes too)."""
    if args.cluster:
        return EmbeddedCluster(
            settings.data_path / "cluster", args.cluster, host=settings.host, max_payload=settings.max_payload_bytes,
            node_config=secure.extra_config if secure else None,
            route_password=secure.route_password() if secure else "",
            route_tls=secure.files.tls if secure else None, allow_public=settings.secure,
            niceness=settings.kill_path_nice)
    return EmbeddedServer(
        settings.data_path / "nats",
        host=settings.host,
        port=settings.port,
        max_payload=settings.max_payload_bytes,
        allow_public=settings.secure,
        extra_config=secure.extra_config(settings.data_path / "nats") if secure else "",
        niceness=settings.kill_path_nice,  # every kill switch passes through the server
    )


def _owned(partitions: int) -> list[str]:
    """On a partitioned log each consumer process of ``rollout up`` owns every partition
    (docs/scaling.md shows how to spread them over processes instead)."""
    return ["--partitions", f"0-{partitions - 1}"] if partitions else []


def _consumer_names() -> list[str]:
    return registry.names()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("up", help="run the embedded stack in the foreground", description=__doc__)
    parser.add_argument("--port", type=int, help="client port (default 4222; 0 picks a free one)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--no-consumers", action="store_true", help="start the server and ticks only")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics of the stack and its consumers on PORT (default: setting "
                             "metrics_port, 0 = off)")
    add_up_flags(parser)
    parser.add_argument("--cluster", type=int, metavar="N", default=0,
                        help="start an N-node JetStream cluster on loopback instead of one server (R3 streams when N >= 3)")
    parser.add_argument("--partitions", type=int, metavar="P",
                        help="partition the log by rollout into P partitions when it is created (docs/scaling.md)")
    parser.set_defaults(handler=handler(serve))
