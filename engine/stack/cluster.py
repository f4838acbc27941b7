"""An N-node JetStream cluster of the bundled nats-server on loopback, for local trials
and tests of cluster mode (R3 streams, node loss).

Cluster routes must be known before the nodes start, so client and route ports are
picked free up front (a lost race retries with new ports). Every node keeps its own data
dir and ports, so a node stopped (or killed) and started again rejoins with its state;
``rollout up`` supervises each node as a child (``engine/stack/supervisor.py``).

Secure mode (``rollout up --secure --cluster N``): every node includes the same per-role
authorization (``node_config``), and the routes between nodes require a password of
their own (``route_password``): without it any local process could connect to a route
port as a "server" and see every message. With TLS the routes use it too.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path

from rollout_engine.engine.stack.server import EmbeddedServer, ServerError

__all__ = ["EmbeddedCluster", "free_ports"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EmbeddedCluster:
    """``size`` nats-server nodes named n1..nN forming one JetStream cluster."""

    def __init__(self, data_dir: str | Path, size: int = 3, *, host: str = "127.0.0.1",
                 max_payload: int = 8 * 1024 * 1024, name: str = "rollout",
                 node_config: Callable[[Path], str] | None = None, route_password: str = "",
                 route_tls: dict[str, Path] | None = None, allow_public: bool = False,
                 niceness: int | None = None) -> None:
        """``node_config(node_dir)``: extra config text of each node (the secure include);
        ``route_password``: require it on the routes; ``route_tls``: ``{"cert", "key", "ca"}``
        for TLS on the routes; ``allow_public``: a non-loopback ``host`` (secure mode only);
        ``niceness``: what each node asks for (``EmbeddedServer``)."""
        if size < 1:
            raise ValueError(f"a cluster needs at least 1 node, got {size}")
        self.data_dir = Path(data_dir)
        self.size = size
        self.host = host
        self.max_payload = max_payload
        self.name = name
        self.node_config = node_config
        self.route_password = route_password
        self.route_tls = route_tls
        self.allow_public = allow_public
        self.niceness = niceness
        self.nodes: list[EmbeddedServer] = []

    def _build(self) -> None:
        ports = free_ports(2 * self.size, self.host)
        client_ports, route_ports = ports[: self.size], ports[self.size :]
        credentials = f"route:{self.route_password}@" if self.route_password else ""
        routes = ", ".join(json.dumps(f"nats-route://{credentials}{self.host}:{p}") for p in route_ports)
        auth = (f"  authorization {{ user: \"route\", password: {json.dumps(self.route_password)}, timeout: 2 }}\n"
                if self.route_password else "")
        tls = ""
        if self.route_tls:
            tls = ("  tls {\n"
                   f"    cert_file: {json.dumps(str(self.route_tls['cert']))}\n"
                   f"    key_file: {json.dumps(str(self.route_tls['key']))}\n"
                   f"    ca_file: {json.dumps(str(self.route_tls['ca']))}\n"
                   "    timeout: 2\n"
                   "  }\n")
        self.nodes = []
        for index in range(self.size):
            node_dir = self.data_dir / f"n{index + 1}"
            cluster_block = (
                "cluster {\n"
                f"  name: {json.dumps(self.name)}\n"
                f"  listen: {json.dumps(f'{self.host}:{route_ports[index]}')}\n"
                f"{auth}{tls}"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            extra = self.node_config(node_dir) if self.node_config else ""
            self.nodes.append(
                EmbeddedServer(
                    node_dir,
                    host=self.host,
                    port=client_ports[index],
                    max_payload=self.max_payload,
                    extra_config=cluster_block + extra,
                    name=f"n{index + 1}",
                    allow_public=self.allow_public,
                    niceness=self.niceness,
                )
            )

    def start(self, timeout: float = 20.0) -> list[str]:
        """Start every node; return their client URLs."""
        for attempt in range(3):
            self._build()
            try:
                for node in self.nodes:
                    node.start(timeout)
                return self.urls
            except ServerError:
                self.stop()
                if attempt == 2:
                    raise
        return self.urls

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.url]

    @property
    def url(self) -> str:
        """All seed servers, comma-separated, as ``Settings.nats_url`` takes them."""
        return ",".join(self.urls)

    def reload(self) -> None:
        """Re-read every node's configuration (an authorization change)."""
        for node in self.nodes:
            node.reload()

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
