"""Replay: rebuild every registered projection from a recorded log and print its digest.

Because projections are pure folds of the ordered log, folding the same messages with
the same stream sequences gives byte-identical snapshots; comparing the digests with the
live consumers' proves the live state is exactly what the log says (invariant 1).

The source is an export file (``rollout export``) or the live stream (``--stream``). Each
message goes through the live runtime's fold (``consumers.folding.fold_message``: decoded
once, applied to every projection in log order): bad items are counted (the live
consumer dead-letters them), a fold that raises is counted for that projection, and a
producer event whose id its rollout already had within the duplicate window is counted
and not folded (``consumers.dedupe``: one seen set from sequence 1, as live). The
result goes into a fresh SQLite store (one row per projection: position, digest,
snapshot) that nothing else uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from rollout_engine.consumers import registry
from rollout_engine.consumers.consumer import RuntimeSettings
from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.consumers.folding import fold_message, read_fresh
from rollout_engine.consumers.projection import META, Projection, digest_of
from rollout_engine.engine.logtools.export import read_export
from rollout_engine.engine.logtools.replay_split import (
    Plan,
    plan_split,
    rollout_of,
    rollout_weights,
)
from rollout_engine.events import LogMessage

__all__ = [
    "ReplayResult",
    "Replayer",
    "make_projections",
    "messages_from_file",
    "replay_messages",
    "replay_parallel",
    "write_store",
]

log = logging.getLogger(__name__)

WARMUP = 50
"""Messages folded in one process, each projection's fold timed, before :meth:`Replayer.feed_parallel`
shares out the rest (serial work: 50 bench messages are 5,000 events, 2.5% of a 200,000-event log)."""


@dataclass
class ReplayResult:
    """What a replay produced: per projection its digest, and the totals."""

    digests: dict[str, str]
    snapshots: dict[str, bytes] = field(repr=False)
    messages: int = 0
    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    emitted: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"digests": self.digests, "messages": self.messages, "events": self.events,
                "rejected": self.rejected, "duplicates": self.duplicates, "emitted": self.emitted, "errors": self.errors,
                "last_seq": self.last_seq, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_per_s)}


def make_projections(names: Iterable[str] | None = None, settings: RuntimeSettings | None = None) -> list[Projection]:
    """A fresh instance of every registered projection (or of the named ones), as each
    registered consumer's ``build(settings)`` makes it for the live runtime."""
    wanted = set(names) if names is not None else None
    out = []
    for spec in registry.specs():
        if wanted is not None and spec.name not in wanted:
            continue
        out.append(registry.build(spec.name, settings).projection)
    if wanted is not None:
        missing = wanted - {p.name for p in out}
        if missing:
            raise LookupError(f"unknown consumer(s) {sorted(missing)}; registered: {registry.names()}")
    return out


def messages_from_file(path: str | Path) -> tuple[dict[str, Any], list[LogMessage]]:
    """(footer, messages) of a verified export file."""
    _header, messages, footer = read_export(path)
    return footer, messages


class Replayer:
    """An incremental replay: :meth:`feed` chunks of messages in stream order, then
    :meth:`result`. Lets ``replay --stream`` fold a log larger than memory.

    ``seen``: the producer event ids folded so far (``consumers.dedupe``), empty at the
    start as the live consumer's at sequence 1; pass ``SeenIds(settings.dedupe_window_s)``
    for a deployment's window. ``dedupe=False`` folds every copy (the benchmark's same-run
    reference; not what any consumer does)."""

    def __init__(self, projections: list[Projection], *, total: int = 0,
                 progress: Callable[[int, int], None] | None = None, seen: SeenIds | None = None,
                 dedupe: bool = True) -> None:
        self.projections = projections
        self.seen = seen if seen is not None else (SeenIds() if dedupe else None)
        self.duplicates = 0
        self.total, self.progress = total, progress
        self.every = max(1, total // 200) if total else 1000
        self.messages = self.events = self.rejected = self.last = 0
        self.emitted = {p.name: 0 for p in projections}
        self.errors = {p.name: 0 for p in projections}
        self.active = list(projections)
        """The projections this process folds for every message (a subset while :meth:`feed_parallel` splits them)."""
        self.partial: list[Projection] = []
        """Separable projections this process folds only for the rollouts ``plan`` gives ``worker``."""
        self.plan: Plan | None = None
        """How the last :meth:`feed_parallel` shared the work (``engine.logtools.replay_split``)."""
        self.worker = 0
        self.seconds = 0.0

    def feed(self, messages: Iterable[LogMessage], timings: dict[str, float] | None = None) -> Replayer:
        """Fold ``messages`` (stream order; a sequence already folded is skipped); with
        ``timings``, add each projection's fold time to it (``fold_message``)."""
        start = time.perf_counter()
        emitted, errors, progress = self.emitted, self.errors, self.progress
        plan, worker, partial = self.plan, self.worker, self.partial
        everything = [*self.active, *partial]
        for message in messages:
            if message.seq <= self.last:
                continue  # a duplicate delivery: the live runtime skips it too
            self.last = message.seq
            active = everything if not partial or plan is None or plan.owns(worker, rollout_of(message.subject)) \
                else self.active
            self.messages += 1
            if active:
                folded = fold_message(message, active, self.seen, timings)
                self.events += folded[0].events
                self.rejected += folded[0].rejected
                self.duplicates += folded[0].duplicates
                for projection, out in zip(active, folded, strict=True):
                    emitted[projection.name] += len(out.emitted)
                    errors[projection.name] += out.errors
            else:  # nothing to fold here: decoded for the counts and the one seen set
                fresh, failed, duplicates = read_fresh(message, self.seen)
                self.events += len(fresh)
                self.rejected += len(failed)
                self.duplicates += duplicates
            if progress is not None and self.messages % self.every == 0:
                progress(self.messages, self.total)
        self.seconds += time.perf_counter() - start
        return self

    def feed_parallel(self, messages: Sequence[LogMessage], workers: int | None = None) -> Replayer:
        """:meth:`feed` a whole log using up to ``workers`` processes (default: the CPUs).

        Why: projections are independent folds of the same log, and a separable one
        (the rollback fold) is a set of independent folds, one per rollout, so on a
        multi-core machine they can be folded side by side. The first :data:`WARMUP`
        messages are folded here with each projection timed; then
        ``engine.logtools.replay_split`` shares the work: whole projections, and the
        rollouts of the separable ones, to the least loaded process. Each process but
        this one is a forked child, which inherits the state so far and sends back its
        snapshots and its rollouts' parts, restored here. Every process decodes every
        message; the digests equal a one-process replay's, byte for byte. Falls back to
        :meth:`feed` without ``os.fork``, on one CPU, or for small logs.
        """
        everything = self.active
        separable = {p.name for p in everything if getattr(p, "separable", False)}
        workers = workers or os.cpu_count() or 1
        if not separable:
            workers = min(workers, len(everything))
        if workers < 2 or not hasattr(os, "fork") or len(messages) < 2 * WARMUP:
            return self.feed(messages)
        start, seconds = time.perf_counter(), self.seconds
        head, rest = messages[:WARMUP], messages[WARMUP:]
        costs: dict[str, float] = {p.name: 0.0 for p in everything}
        self.feed(head, timings=costs)  # decoded once, each projection's fold timed
        plan = self.plan = plan_split(costs, separable, rollout_weights(rest), workers)
        split = [p for p in everything if p.name in plan.separable]

        def whole(worker: int) -> list[Projection]:
            return [p for p in everything if p.name in plan.whole[worker]]

        children = [self._fork(w, whole(w), split, rest) for w in range(1, workers) if plan.busy(w)]
        merged: dict[str, dict[str, bytes]] = {p.name: {} for p in split}
        by_name = {p.name: p for p in everything}
        try:
            self._take_share(0, whole(0), split)
            self.feed(rest)
            for pid, fd, worker in children:
                with os.fdopen(fd, "rb") as pipe:
                    data = pipe.read()
                _, status = os.waitpid(pid, 0)
                if status != 0 or not data:
                    raise RuntimeError(f"replay worker {worker} ({sorted(plan.whole[worker])}, and its share of the "
                                       f"rollouts of {sorted(plan.separable)}) failed (wait status {status}); run "
                                       "again, or fold in one process with Replayer.feed")
                got = _worker_decoder.decode(data)
                for name, snapshot in got.snapshots.items():
                    by_name[name].restore(snapshot)
                for name, parts in got.parts.items():
                    merged[name].update(parts)
                for name, count in got.emitted.items():
                    self.emitted[name] += count
                for name, count in got.errors.items():
                    self.errors[name] += count
            for projection in split:  # this process's rollouts and the meta part, then the children's
                projection.restore_parts({**projection.all_parts(), **merged[projection.name]})  # type: ignore[attr-defined]
        except BaseException:
            for pid, _fd, _worker in children:  # no orphan folding on after a failure here
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            raise
        finally:
            self.active, self.partial, self.worker = everything, [], 0
        self.seconds = seconds + time.perf_counter() - start
        return self

    def _take_share(self, worker: int, whole: list[Projection], split: list[Projection]) -> None:
        """Fold from now on ``whole`` for every message and ``split`` for ``worker``'s
        rollouts only; the other rollouts' states leave the split projections (their
        owners send them back)."""
        assert self.plan is not None
        self.active, self.partial, self.worker = whole, split, worker
        for projection in split:
            for rollout in [r for r in projection.rollouts if not self.plan.owns(worker, r)]:  # type: ignore[attr-defined]
                projection.rest(rollout)  # type: ignore[attr-defined]

    def _fork(self, worker: int, whole: list[Projection], split: list[Projection],
              rest: Sequence[LogMessage]) -> tuple[int, int, int]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: fold its share, send the snapshots and parts, exit without cleanup
            code = 1
            try:
                os.close(read_fd)
                self.progress = None
                emitted, errors = dict(self.emitted), dict(self.errors)
                self._take_share(worker, whole, split)
                self.feed(rest)
                names = [p.name for p in (*whole, *split)]
                out = _WorkerResult({p.name: p.snapshot() for p in whole},
                                    {p.name: {k: v for k, v in p.all_parts().items() if k != META}  # type: ignore[attr-defined]
                                     for p in split},
                                    {n: self.emitted[n] - emitted[n] for n in names},
                                    {n: self.errors[n] - errors[n] for n in names})
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(_worker_encoder.encode(out))
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        return pid, read_fd, worker

    def result(self) -> ReplayResult:
        if self.progress is not None:
            self.progress(self.messages, self.total or self.messages)
        snapshots = {p.name: p.snapshot() for p in self.projections}
        return ReplayResult(
            digests={name: digest_of(snap) for name, snap in snapshots.items()},
            snapshots=snapshots, messages=self.messages, events=self.events, rejected=self.rejected,
            duplicates=self.duplicates,
            emitted=self.emitted, errors=self.errors, last_seq=self.last, seconds=self.seconds,
        )


class _WorkerResult(msgspec.Struct, array_like=True):
    snapshots: dict[str, bytes]
    """Whole projections: their snapshot."""
    parts: dict[str, dict[str, bytes]]
    """Separable projections: the parts of the worker's rollouts."""
    emitted: dict[str, int]
    """What the worker's folds emitted and raised (not what it inherited)."""
    errors: dict[str, int]


_worker_encoder = msgspec.msgpack.Encoder()
_worker_decoder = msgspec.msgpack.Decoder(_WorkerResult)


def replay_messages(
    messages: Iterable[LogMessage],
    projections: list[Projection],
    *,
    total: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Fold messages (in stream order) into every projection; return digests and counts."""
    return Replayer(projections, total=total, progress=progress).feed(messages).result()


def replay_parallel(messages: Sequence[LogMessage], projections: list[Projection], *, workers: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """:func:`replay_messages` folding the projections in up to ``workers`` processes."""
    replayer = Replayer(projections, total=len(messages), progress=progress)
    return replayer.feed_parallel(messages, workers).result()


def write_store(result: ReplayResult, path: str | Path) -> Path:
    """Write the rebuilt state into a fresh SQLite store (refuses to overwrite one)."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} exists; replay writes a fresh store, choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(target) as db:
        db.execute("CREATE TABLE projection (name TEXT PRIMARY KEY, position INTEGER NOT NULL, "
                   "digest TEXT NOT NULL, snapshot BLOB NOT NULL)")
        db.executemany("INSERT INTO projection VALUES (?, ?, ?, ?)",
                       [(name, result.last_seq, result.digests[name], snap) for name, snap in result.snapshots.items()])
    return target
