"""Consumers started as ``rollout consumer NAME`` children, as ``rollout up`` runs them:
the benches that need a consumer in a process of its own (partitioned throughput, the
kill path as deployed, many resting rollouts) start, wait for and stop them here."""

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

__all__ = ["consumer_children", "durables_exist", "named_children"]

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def consumer_children(url: str, data_dir: str, name: str, owners: Sequence[Sequence[str]],
                            args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                            ) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """One ``rollout consumer name`` child per entry of ``owners`` (its ownership options,
    e.g. ``["--process", "0", "--of", "2"]``, or none), each with ``args``; stopped with
    SIGTERM on exit, and a child that failed raises with the end of its stderr."""
    async with _children([(name, [*owner, *args]) for owner in owners], url, data_dir, env) as procs:
        yield [proc for _name, proc in procs]


@contextlib.asynccontextmanager
async def named_children(url: str, data_dir: str, names: Sequence[str], env: Mapping[str, str] | None = None,
                         ) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """One ``rollout consumer NAME`` child for each of ``names`` (the whole log each), as
    ``rollout up`` runs them; stopped and checked as :func:`consumer_children`'s."""
    async with _children([(name, []) for name in names], url, data_dir, env) as procs:
        yield dict(procs)


@contextlib.asynccontextmanager
async def _children(commands: Sequence[tuple[str, Sequence[str]]], url: str, data_dir: str,
                    env: Mapping[str, str] | None) -> AsyncIterator[list[tuple[str, asyncio.subprocess.Process]]]:
    """``rollout consumer NAME OPTIONS...`` for each ``(NAME, OPTIONS)``; SIGTERM to all on
    exit, then each one's exit checked (SIGTERM's own status is a clean stop)."""
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    try:
        for name, options in commands:
            procs.append((name, await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "--data-dir", data_dir,
                "consumer", name, *options,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=child_env)))
        yield procs
    finally:
        for _name, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        failed = []
        for name, proc in procs:
            _, err = await proc.communicate()
            if proc.returncode not in (0, -signal.SIGTERM):
                failed.append(f"consumer {name} child failed ({proc.returncode}): {err.decode()[-1000:]}")
        if failed:
            raise RuntimeError("; ".join(failed))


async def durables_exist(js: Any, durables: Sequence[str]) -> bool:
    """Whether every durable consumer of ``durables`` exists on the log stream yet."""
    try:
        for durable in durables:
            await js.consumer_info(subjects.LOG_STREAM, durable)
    except NotFoundError:
        return False
    return True
