"""A busy host for the kill-path bench: CPU-bound neighbours, and where one breach's time goes.

- :func:`neighbours` starts one ``python -c "while True: pass"`` per core (``os.cpu_count()``)
  at normal priority and kills them after: the host of a real deployment runs other
  work, and the scheduler then gives the consumer about a third of a core, not one.
- :class:`KillTrace` wraps a live :class:`consumers.runtime.Runner`'s steps (fetch ->
  fold -> early publish -> commit -> relay) and stamps them for the batch that carries
  each breach's trigger, so ``bench/NOTES.md`` can say which step the p99 is made of.
  It only wraps instance attributes: the runtime itself carries no tracing code.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rollout_engine.engine.stack.processes import ask_priority, child_preexec

__all__ = ["KillTrace", "neighbours", "priority"]

SPIN = "while True: pass"


@contextlib.contextmanager
def neighbours(count: int | None = None, nice: int = 0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` CPU-bound processes (default: one per core) for the duration of the block;
    ``nice`` > 0 runs them at that lower priority, as ``rollout up`` runs its bulk consumers.
    They die with the thread that started them (Linux), so a bench stopped with a signal
    leaves no core spinning: start them from the thread that lives through the block."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=child_preexec(nice))
             for _ in range(count or os.cpu_count() or 1)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


@contextlib.contextmanager
def priority(nice: int) -> Iterator[int]:
    """This process at niceness ``nice`` while the block runs, if the OS grants it (what
    the rollback consumer asks for at start, setting ``kill_path_nice``); yields the
    niceness it runs at, restores the one before."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    now, _refused = ask_priority(nice)
    try:
        yield now
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, before)


@dataclass
class _Breach:
    """The stamps of one breach, seconds from the trigger's publication (``perf_counter``)."""

    t0: float
    after_seq: int
    prefix: str
    stamps: dict[str, float] = field(default_factory=dict)
    batch: int = 0
    index: int = 0
    busy_before: float = 0.0  # time the loop spent on earlier batches after t0

    def mark(self, name: str) -> None:
        self.stamps.setdefault(name, time.perf_counter() - self.t0)


class KillTrace:
    """Stamp one breach at a time through a runner (see the module docstring)."""

    STEPS = ("fetched", "folded", "published", "committed", "relayed", "received")

    def __init__(self, runner: Any) -> None:
        self.breaches: list[_Breach] = []
        self.current: _Breach | None = None
        self._wrap(runner, "_process", self._process)
        self._wrap(runner.store, "commit_waiting", self._commit)
        self._wrap(runner.relay, "relay", self._relay)
        if hasattr(runner.relay, "publish_early"):
            self._wrap(runner.relay, "publish_early", self._early)

    @staticmethod
    def _wrap(obj: Any, name: str, make: Any) -> None:
        setattr(obj, name, make(getattr(obj, name)))

    def arm(self, rollout_prefix: str, after_seq: int, t0: float) -> None:
        """The next message on ``rollout_prefix``'s subjects after ``after_seq`` is the trigger."""
        self.current = _Breach(t0, after_seq, rollout_prefix)
        self.breaches.append(self.current)

    def received(self) -> None:
        if self.current is not None:
            self.current.mark("received")
            self.current = None

    def _mine(self) -> _Breach | None:
        b = self.current
        return b if b is not None and "fetched" in b.stamps else None

    def _process(self, inner: Any) -> Any:
        async def process(messages: list[Any], *acks: Any) -> Any:
            b, began = self.current, time.perf_counter()
            if b is not None and "fetched" not in b.stamps:
                hit = [i for i, m in enumerate(messages) if m.seq > b.after_seq and m.subject.startswith(b.prefix)]
                if hit:
                    b.mark("fetched")
                    b.batch, b.index = len(messages), hit[0]
            try:
                return await inner(messages, *acks)
            finally:
                if b is not None and "fetched" not in b.stamps:
                    b.busy_before += time.perf_counter() - max(began, b.t0)
        return process

    def _commit(self, inner: Any) -> Any:
        async def commit(*args: Any, **kwargs: Any) -> Any:
            b = self._mine()
            if b is not None:
                b.mark("folded")
            result = await inner(*args, **kwargs)
            if b is not None:
                b.mark("committed")
            return result
        return commit

    def _relay(self, inner: Any) -> Any:
        async def relay(js: Any, rows: list[Any]) -> Any:
            b = self._mine()
            if b is not None and rows:
                b.mark("published")
            result = await inner(js, rows)
            if b is not None and rows:
                b.mark("relayed")
            return result
        return relay

    def _early(self, inner: Any) -> Any:
        def early(*args: Any, **kwargs: Any) -> Any:
            b = self._mine()
            if b is not None:
                b.mark("folded")
                b.mark("published")
            return inner(*args, **kwargs)
        return early

    def summary(self) -> dict[str, Any]:
        """Per step, the median and p99 (ms) of its stamp, and the five slowest breaches in full."""
        done = [b for b in self.breaches if "received" in b.stamps]
        out: dict[str, Any] = {"breaches": len(done)}
        for step in self.STEPS:
            values = sorted(b.stamps[step] * 1000 for b in done if step in b.stamps)
            if values:
                out[step] = {"p50": statistics.median(values), "p99": values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]}
        busy = sorted(b.busy_before * 1000 for b in done)
        if busy:
            out["busy_before"] = {"p50": statistics.median(busy), "p99": busy[min(len(busy) - 1, round(0.99 * (len(busy) - 1)))]}
        slow = sorted(done, key=lambda b: -b.stamps["received"])[:5]
        out["slowest"] = [{"batch": b.batch, "index": b.index, "busy_before_ms": round(b.busy_before * 1000, 1),
                           **{k: round(v * 1000, 1) for k, v in b.stamps.items()}} for b in slow]
        return out
