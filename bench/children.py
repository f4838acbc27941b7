"""Consumers started as ``rollout consumer NAME`` children, as ``rollout up`` runs them:
the benches that need a consumer in a process of its own (partitioned throughput, the
kill path as deployed) start, wait for and stop them here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from rollout_engine.events import subjects

__all__ = ["consumer_children", "durables_exist"]

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def consumer_children(url: str, data_dir: str, name: str, owners: Sequence[Sequence[str]],
                            args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                            ) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """One ``rollout consumer name`` child per entry of ``owners`` (its ownership options,
    e.g. ``["--process", "0", "--of", "2"]``, or none), each with ``args``; stopped with
    SIGTERM on exit, and a child that failed raises with the end of its stderr."""
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "--data-dir", data_dir,
        "consumer", name, *owner, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=child_env) for owner in owners]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, err = await proc.communicate()
            if proc.returncode not in (0, -signal.SIGTERM):
                raise RuntimeError(f"consumer {name} child failed ({proc.returncode}): {err.decode()[-1000:]}")


async def durables_exist(js: Any, durables: Sequence[str]) -> bool:
    """Whether every durable consumer of ``durables`` exists on the log stream yet."""
    try:
        for durable in durables:
            await js.consumer_info(subjects.LOG_STREAM, durable)
    except NotFoundError:
        return False
    return True
