"""Shared fixtures: a real nats-server on a free port (never a fixed port, never a mock).

``nats_server`` is started once per session; ``fresh_server`` gives a test its own
server (about 40 ms to start) when it needs to stop, restart or fill one.
``bus`` connects to the session server and provisions the engine's streams; tests keep
out of each other's way by using their own rollout ids (``rollout_id`` fixture).
``stack`` is the same on a test's own server; ``api`` serves the operator API.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.server import EmbeddedServer

_ids = itertools.count(1)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path_factory.mktemp("nats-session"), port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "nats", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedServer) -> Settings:
    """Settings pointing at the session server, with a private data dir."""
    return load_settings(env={}, nats_url=nats_server.url, data_dir=str(tmp_path / "data"))


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[tuple[object, object]]:
    """(nc, js) on the session server, streams and KV provisioned."""
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    yield nc, js
    await nc.close()


@pytest.fixture
async def stack(fresh_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[tuple[Settings, Any, Any]]:
    """(settings, nc, js) on a server of this test's own, streams and KV provisioned."""
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"))
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    yield settings, nc, js
    await nc.close()


@pytest.fixture
async def api(bus: tuple[Any, Any]) -> AsyncIterator[tuple[Any, Any]]:
    """The operator API (nats.micro) served in-process on the session server."""
    from rollout_engine.engine.api.service import serve_api

    nc, js = bus
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_api(nc, stop, ready))
    await ready.wait()
    yield nc, js
    stop.set()
    await task


@pytest.fixture
def rollout_id(request: pytest.FixtureRequest) -> str:
    """A rollout id unique to this test, so tests sharing the session server never mix."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"{base}-{next(_ids)}"
