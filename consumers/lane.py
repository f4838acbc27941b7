"""The commit lane: one batch's SQLite commit runs while the next batch is folded.

Folding is Python on the event loop; a commit is mostly SQLite's C code on aiosqlite's
thread, which releases the GIL. Run one after the other, every commit held the loop (30
ms at the median on a quiet host at 50,000 events/s, 25-60 ms in the worst batches with
a CPU-bound neighbour per core) and a breach arriving meanwhile waited for it before its
own fold could start. The lane keeps at most one commit in flight and the runtime waits
for it only when the next batch is folded and ready to commit, so the two overlap.

What stays exactly once (docs/reliability.md, "The commit lane"):

- commits are still one at a time and in order: batch N+1's commit starts after N's;
- a message is acked only after the commit that holds it (the lane's commit does it);
- a crash loses at most the folded, uncommitted batches: their messages are unacked,
  the next process refolds them from the committed position and re-derives the same
  commands under the same ids (JetStream drops the re-sends);
- a store fault stalls the lane, and the runtime takes no further batch: it waits for
  the stalled commit before it hands over the next one;
- a rollout touched by a folded but uncommitted batch never rests out of memory
  (``Resident.settle(keep=...)``): its part in the store is older than its state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from rollout_engine.consumers.consumer import RuntimeMetrics
from rollout_engine.consumers.folding import BatchResult

__all__ = ["CommitLane", "count_commit"]

log = logging.getLogger("rollout_engine.consumers.runtime")


class CommitLane:
    """At most one commit in flight; :meth:`landed` waits for it and says what it committed."""

    def __init__(self) -> None:
        self._task: asyncio.Future[BatchResult] | None = None

    @property
    def busy(self) -> bool:
        """A commit was handed over and not yet waited for."""
        return self._task is not None

    def start(self, commit: Coroutine[Any, Any, BatchResult]) -> None:
        """Run ``commit`` beside the loop; the previous one must have landed (:meth:`landed`)."""
        if self._task is not None:
            commit.close()
            raise RuntimeError("a commit is already in flight: await CommitLane.landed() before starting the next")
        self._task = asyncio.ensure_future(commit)

    async def landed(self) -> BatchResult | None:
        """Wait for the commit in flight; its batch, or None when none was. A failed commit
        raises here, once (the runtime stops, the next process refolds from the store)."""
        task, self._task = self._task, None
        if task is None:
            return None
        return await task


def count_commit(metrics: RuntimeMetrics, name: str, total: BatchResult, seconds: float) -> None:
    """Count a landed commit: events, messages, its duration, the position, its dead letters."""
    metrics.events.labels(name).inc(total.events)
    metrics.messages.labels(name).inc(total.messages)
    metrics.commits.labels(name).inc()
    metrics.commit_seconds.labels(name).observe(seconds)
    metrics.position.labels(name).set(total.seq)
    for dead in total.dead:
        metrics.dead.labels(name, dead.field[:40]).inc()
        log.warning("%s: dead letter seq %d item %d: %s", name, dead.seq, dead.index, dead.reason[:300])
