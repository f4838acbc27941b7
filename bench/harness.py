"""Measurement helpers: repeated runs, median and spread, a private nats-server."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.server import EmbeddedServer

__all__ = ["Figure", "bench_server", "measure", "timed"]


@dataclass
class Figure:
    """One benchmark figure: median of runs, spread, and the reference it stands beside."""

    name: str
    unit: str
    median: float
    low: float
    high: float
    runs: list[float]
    target: str = ""
    reference: str = ""
    reference_value: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference_value:
            return self.median / self.reference_value
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


async def measure(name: str, unit: str, run: Callable[[], Awaitable[float]], repeat: int = 3, **meta: Any) -> Figure:
    """Run ``run`` ``repeat`` times (each returns one value) and keep median and range."""
    values = [await run() for _ in range(repeat)]
    return Figure(name, unit, statistics.median(values), min(values), max(values), values, **meta)


@contextlib.contextmanager
def timed() -> Any:
    """``with timed() as t: ...; t()`` gives the elapsed seconds."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


@contextlib.asynccontextmanager
async def bench_server(niceness: int | None = None,
                       **settings_overrides: Any) -> AsyncIterator[tuple[EmbeddedServer, Settings, Any, Any]]:
    """A fresh nats-server on a free port with the engine's streams provisioned; ``niceness``
    as ``rollout up`` asks for it (``kill_path_nice``), None for the default."""
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        server = EmbeddedServer(f"{tmp}/nats", port=0, niceness=niceness)
        server.start()
        try:
            settings = load_settings(env={}, nats_url=server.url, data_dir=f"{tmp}/data", **settings_overrides)
            nc = await connect(settings, name="bench")
            js = nc.jetstream()
            await provision(js, settings)
            try:
                yield server, settings, nc, js
            finally:
                await nc.close()
        finally:
            server.stop()
