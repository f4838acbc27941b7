"""The rollback consumer as ``rollout up`` runs it, for the kill-path bench: child processes.

``rollout up`` runs every consumer in a process of its own (engine/stack/supervisor.py);
``bench.bench_rollback``'s default driver runs the runtime inside the measuring process,
beside the background producer and the subscribed service, which is what lets it trace
each breach. This driver starts ``rollout consumer rollback`` children instead, one per
process of ``--process K --of N`` over a log of N partitions (one child on an
unpartitioned log when N is 1), each asking for ``kill_path_nice`` itself as under
``rollout up``. The measuring process (producer and service) keeps the default priority,
as the services of a busy host would.

Partitions are how the engine scales the kill path out (docs/scaling.md): each process
folds only its partitions' rollouts, so a breach waits behind a share of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bench.children import consumer_children, durables_exist
from rollout_engine.consumers.consumer import store_name
from rollout_engine.engine.settings import Settings
from rollout_engine.events import subjects

__all__ = ["RollbackChildren", "rollback_children"]


@dataclass
class RollbackChildren:
    """The running children: which durable folds a rollout, and when it has folded a message."""

    processes: int
    pids: list[int] = field(default_factory=list)

    def durable(self, rollout: str) -> str:
        """The durable consumer of the partition that owns ``rollout`` (the log has one per partition)."""
        if self.processes < 2:
            return store_name("rollback", None)
        return store_name("rollback", subjects.partition_of(rollout, self.processes))

    def niceness(self) -> int:
        """The niceness the children got (the highest of them: what a refused request shows)."""
        return max(os.getpriority(os.PRIO_PROCESS, pid) for pid in self.pids)

    async def wait_folded(self, js: Any, rollout: str, seq: int, timeout: float) -> None:
        """Wait until the owner of ``rollout`` acknowledged stream sequence ``seq``: its
        acks follow its commit, so the message is folded (and committed)."""
        deadline = time.monotonic() + timeout
        name = self.durable(rollout)
        while (await js.consumer_info(subjects.LOG_STREAM, name)).ack_floor.stream_seq < seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollback consumer {name} did not reach seq {seq} within {timeout} s")
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def rollback_children(url: str, settings: Settings, processes: int, niceness: int,
                            js: Any) -> AsyncIterator[RollbackChildren]:
    """Start ``processes`` rollback consumer children on the log of ``settings`` (made
    with ``partitions = processes`` when more than one) and wait for their durables."""
    env = {"ROLLOUT_KILL_PATH_NICE": str(niceness), "ROLLOUT_PARTITIONS": str(settings.partitions),
           "ROLLOUT_CONSUMER_BATCH": str(settings.consumer_batch)}
    owners = [["--process", str(k), "--of", str(processes)] for k in range(processes)] if processes > 1 else [[]]
    async with consumer_children(url, settings.data_dir, "rollback", owners, ["--metrics-port", "0"], env) as procs:
        durables = [store_name("rollback", p) for p in range(processes)] if processes > 1 else ["rollback"]
        deadline = time.monotonic() + 60
        while not await durables_exist(js, durables):
            failed = [p for p in procs if p.returncode is not None]
            if failed:
                err = await failed[0].stderr.read() if failed[0].stderr is not None else b""
                raise RuntimeError(f"a rollback consumer child exited at start: {err.decode()[-1000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rollback consumer children made no durable {durables} within 60 s")
            await asyncio.sleep(0.05)
        yield RollbackChildren(processes, [p.pid for p in procs])
