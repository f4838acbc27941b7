"""TLS and credential failures on the first connect end quickly, with a message naming the cause.

nats-py alone would hang here: after a refused TLS handshake it retries, and its close
never returns (nats-io/nats.py#718); ``rollout status`` once ran for ten minutes.
``engine.bus.connect`` stops on the first such error. Every call is wrapped in a
generous ``wait_for``: a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import pytest

from rollout_engine.engine.bus import BusUnavailable, connect
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.security import SecureFiles, write_secure_dir
from rollout_engine.engine.stack.server import EmbeddedServer

HANG_GUARD_S = 30.0
"""Far above the connect deadline (3 s): only a hang reaches it."""


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, SecureFiles]]:
    root = tmp_path_factory.mktemp("tls")
    files = write_secure_dir(root / "secure", root, tls=True)
    server = EmbeddedServer(root / "nats", extra_config=files.server_include(root / "nats"))
    server.start()
    yield server, files
    server.stop()


def _settings(server: EmbeddedServer, files: SecureFiles, role: str = "operator", password: str | None = None) -> Settings:
    return load_settings(env={}, nats_url=server.url, data_dir=str(files.directory.parent), user=role,
                         password=password or files.passwords[role], secure=True)


@pytest.mark.parametrize("reconnect", [False, True])
async def test_a_tls_connect_without_the_ca_fails_within_the_deadline_naming_tls(
        tls_server: tuple[EmbeddedServer, SecureFiles], monkeypatch: pytest.MonkeyPatch, reconnect: bool) -> None:
    server, files = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(BusUnavailable) as failure:
        await asyncio.wait_for(connect(_settings(server, files), reconnect=reconnect), HANG_GUARD_S)
    message = str(failure.value)
    assert "TLS handshake with tls://" in message
    assert f"SSL_CERT_FILE={files.tls['ca']}" in message  # type: ignore[index]
    assert "no NATS server answered" not in message


async def test_a_tls_connect_with_the_ca_works_and_a_wrong_password_is_named(
        tls_server: tuple[EmbeddedServer, SecureFiles], monkeypatch: pytest.MonkeyPatch) -> None:
    server, files = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(files.tls["ca"]))  # type: ignore[index]
    nc = await asyncio.wait_for(connect(_settings(server, files)), HANG_GUARD_S)
    assert nc.is_connected
    await nc.close()
    for reconnect in (False, True):
        with pytest.raises(BusUnavailable, match="refused user 'operator' \\(authorization violation\\)"):
            await asyncio.wait_for(connect(_settings(server, files, password="x" * 43), reconnect=reconnect),
                                   HANG_GUARD_S)


async def test_rollout_status_without_the_ca_exits_with_the_tls_problem(
        tls_server: tuple[EmbeddedServer, SecureFiles]) -> None:
    """The reported case end to end: `rollout status` over tls:// without SSL_CERT_FILE."""
    server, files = tls_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_") and k != "SSL_CERT_FILE"}
    env["ROLLOUT_NATS_URL"] = server.url
    command = [sys.executable, "-m", "rollout_engine.engine.cli", "--config", str(files.role_settings["operator"]), "status"]

    async def run(extra: dict[str, str]) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(*command, env={**env, **extra}, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("rollout status hung on a TLS connect without the CA") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, _, err = await run({})
    assert code == 2, err
    assert "TLS handshake with tls://" in err and str(files.tls["ca"]) in err  # type: ignore[index]
    assert "Traceback" not in err
    code, out, err = await run({"SSL_CERT_FILE": str(files.tls["ca"])})  # type: ignore[index]
    assert code == 0, err
    assert server.url in out

