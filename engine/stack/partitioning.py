"""Which partitions a consumer process owns, and running one runner per owned partition.

The log is split by rollout into ``N`` partitions when it is created (setting
``partitions``; the stream's subject transform appends ``partition(N, rollout)`` to
every evt/ctl subject, see ``events.subjects``). A consumer process owns a set of
partitions, given explicitly (``--partitions 0,1``) or computed (``--process K --of M``
owns every partition ``p`` with ``p % M == K``). Each owned partition has its own
durable JetStream consumer and its own SQLite store, so moving a partition to another
process moves its checkpoint with it: stop the old owner, start the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from rollout_engine.consumers.consumer import Consumer, RunSummary
from rollout_engine.consumers.runtime import Runner
from rollout_engine.engine.bus import connect
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import subjects

__all__ = ["assign", "log_partitions", "parse_partitions", "run_partitions"]

log = logging.getLogger(__name__)


def parse_partitions(text: str) -> list[int]:
    """``"0,1,4-6"`` -> ``[0, 1, 4, 5, 6]``; a clear ValueError for anything else."""
    found: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"--partitions {text!r}: {item!r} is not a number or a range like 2-5") from None
        if first < 0 or last < first:
            raise ValueError(f"--partitions {text!r}: {item!r} is not a valid range of partition numbers (>= 0)")
        found.update(range(first, last + 1))
    if not found:
        raise ValueError(f"--partitions {text!r} names no partition; give e.g. 0,1")
    return sorted(found)


def assign(count: int, process: int, of: int) -> list[int]:
    """Partitions of process ``process`` among ``of`` processes sharing ``count`` partitions.

    Round robin (``p % of == process``): every partition has exactly one owner, and the
    assignment of ``K of M`` is computed alike by every process with no coordination.
    """
    if of < 1 or not 0 <= process < of:
        raise ValueError(f"--process {process} --of {of}: need 0 <= process < of")
    if count < of:
        raise ValueError(f"{of} processes for {count} partitions: some would own nothing; run at most {count}")
    return [p for p in range(count) if p % of == process]


async def log_partitions(js: JetStreamContext, wait_s: float = 30.0) -> int:
    """The partition count of the log stream (0: unpartitioned or absent).

    Waits out a cluster that does not answer yet (a leader election times requests out).
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            info = await js.stream_info(subjects.LOG_STREAM)
            break
        except NotFoundError:
            return 0
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    transform = info.config.subject_transform
    return subjects.partition_count(transform.dest if transform else None)


async def run_partitions(
    build: Callable[[], Consumer],
    settings: Settings,
    partitions: Sequence[int],
    *,
    until_idle: bool = False,
    on_runners: Callable[[list[Runner]], None] | None = None,
    standby: bool = False,
) -> list[RunSummary]:
    """Run one :class:`Runner` per partition in this process on one connection.

    ``build`` makes a fresh consumer (projection and hooks) per partition. When one
    runner fails, the others are stopped (they commit their batch) and the error is raised.
    ``standby``: each runner waits for its partition's store lock (see ``Runner``).
    """
    nc = await connect(settings, name=f"consumer-partitions-{','.join(map(str, partitions))}")
    runners = [consumer_runner(build(), settings, nc=nc, until_idle=until_idle, partition=p, standby=standby)
               for p in partitions]
    if on_runners is not None:
        on_runners(runners)
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if any(t.exception() for t in done):
            for runner in runners:
                runner.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, RunSummary)]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await nc.drain()
