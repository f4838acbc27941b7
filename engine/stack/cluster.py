"""An N-node JetStream cluster of the bundled nats-server on loopback, for local trials
and tests of cluster mode (R3 streams, node loss).

Cluster routes must be known before the nodes start, so client and route ports are
picked free up front (loopback only; a lost race retries with new ports). Every node
keeps its own data dir, so a node stopped and started again rejoins with its state.
"""

from __future__ import annotations

import contextlib
import socket
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
                 max_payload: int = 8 * 1024 * 1024, name: str = "rollout") -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least 1 node, got {size}")
        self.data_dir = Path(data_dir)
        self.size = size
        self.host = host
        self.max_payload = max_payload
        self.name = name
        self.nodes: list[EmbeddedServer] = []

    def _build(self) -> None:
        ports = free_ports(2 * self.size, self.host)
        client_ports, route_ports = ports[: self.size], ports[self.size :]
        routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in route_ports)
        self.nodes = []
        for index in range(self.size):
            cluster_block = (
                "cluster {\n"
                f'  name: "{self.name}"\n'
                f'  listen: "{self.host}:{route_ports[index]}"\n'
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.nodes.append(
                EmbeddedServer(
                    self.data_dir / f"n{index + 1}",
                    host=self.host,
                    port=client_ports[index],
                    max_payload=self.max_payload,
                    extra_config=cluster_block,
                    name=f"n{index + 1}",
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

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
