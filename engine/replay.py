"""Replay: rebuild every registered projection from a recorded log and print its digest.

Because projections are pure folds of the ordered log, folding the same messages with
the same stream sequences gives byte-identical snapshots; comparing the digests with the
live consumers' proves the live state is exactly what the log says (invariant 1).

The source is an export file (``rollout export``) or the live stream (``--stream``). Each
message is decoded once and applied to every projection in log order, with the live
runtime's rules: bad items are skipped (the live consumer dead-letters them) and a
fold that raises is skipped for that projection. The result goes into a fresh SQLite
store (one row per projection: position, digest, snapshot) that nothing else uses.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers.projection import Projection, digest_of
from engine.export import read_export
from events import decode_lenient, encode_batch

__all__ = [
    "Message",
    "ReplayResult",
    "Replayer",
    "make_projections",
    "messages_from_file",
    "replay_messages",
    "write_store",
]

log = logging.getLogger(__name__)

Message = tuple[int, str, bytes]
"""(stream sequence, subject, payload): what a live consumer receives."""


@dataclass
class ReplayResult:
    """What a replay produced: per projection its digest, and the totals."""

    digests: dict[str, str]
    snapshots: dict[str, bytes] = field(repr=False)
    messages: int = 0
    events: int = 0
    rejected: int = 0
    emitted: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"digests": self.digests, "messages": self.messages, "events": self.events,
                "rejected": self.rejected, "emitted": self.emitted, "errors": self.errors,
                "last_seq": self.last_seq, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_per_s)}


def _factory(spec: Any, settings: Any) -> Callable[[], Projection]:
    """How a registered consumer makes a fresh projection: its module's ``build(settings)``
    (the runtime's contract) gives a Consumer whose ``projection`` is folded here."""
    module = importlib.import_module(spec.module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise LookupError(f"consumer {spec.name!r} ({spec.module}) has no build(settings); see consumers/runtime.py")
    return lambda: build(settings).projection


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _subject_filter(name: str) -> Callable[[str], bool] | None:
    """The subjects a registered consumer reads (None: the whole log)."""
    try:
        from consumers import registry

        spec = registry.get(name)
    except (KeyError, ImportError):
        return None
    patterns = next((getattr(spec, a) for a in ("filter_subjects", "subjects", "filters") if getattr(spec, a, None)), None)
    if not patterns:
        return None
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return lambda subject: any(_matches(p, subject) for p in patterns)


def make_projections(names: Iterable[str] | None = None, settings: Any = None) -> list[Projection]:
    """A fresh instance of every registered projection (or of the named ones)."""
    from consumers import registry
    from engine.settings import load_settings

    settings = settings if settings is not None else load_settings(env={})
    wanted = set(names) if names is not None else None
    out = []
    for spec in registry.specs():
        if wanted is not None and spec.name not in wanted:
            continue
        out.append(_factory(spec, settings)())
    if wanted is not None:
        missing = wanted - {p.name for p in out}
        if missing:
            raise LookupError(f"unknown consumer(s) {sorted(missing)}; registered: {registry.names()}")
    return out


def messages_from_file(path: str | Path) -> tuple[dict[str, Any], list[Message]]:
    """(footer, messages) of a verified export file; JSONL events are re-encoded once."""
    _header, records, footer = read_export(path)
    messages: list[Message] = []
    for record in records:
        if record.data is not None:
            messages.append((record.seq, record.subject, record.data))
        elif record.events:
            messages.append((record.seq, record.subject, encode_batch(record.events)))
    return footer, messages


class Replayer:
    """An incremental replay: :meth:`feed` chunks of messages in stream order, then
    :meth:`result`. Lets ``replay --stream`` fold a log larger than memory."""

    def __init__(self, projections: list[Projection], *, total: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.projections = projections
        self.total, self.progress = total, progress
        self.every = max(1, total // 200) if total else 1000
        self.messages = self.events = self.rejected = self.last = 0
        self.emitted = {p.name: 0 for p in projections}
        self.errors = {p.name: 0 for p in projections}
        self.appliers = [(p.name, p.apply, _subject_filter(p.name)) for p in projections]
        self.seconds = 0.0

    def feed(self, messages: Iterable[Message]) -> Replayer:
        start = time.perf_counter()
        emitted, errors, progress = self.emitted, self.errors, self.progress
        for seq, subject, data in messages:
            if seq <= self.last:
                continue  # a duplicate delivery: the live runtime skips it too
            self.last = seq
            events, rejected = decode_lenient(data)
            self.rejected += len(rejected)
            self.messages += 1
            self.events += len(events)
            for name, apply, wants in self.appliers:
                if wants is not None and not wants(subject):
                    continue
                for event in events:
                    try:
                        out = apply(event, seq)
                    except Exception:  # the live runtime dead-letters it and goes on
                        errors[name] += 1
                        continue
                    if out:
                        emitted[name] += len(out)
            if progress is not None and self.messages % self.every == 0:
                progress(self.messages, self.total)
        self.seconds += time.perf_counter() - start
        return self

    def result(self) -> ReplayResult:
        if self.progress is not None:
            self.progress(self.messages, self.total or self.messages)
        snapshots = {p.name: p.snapshot() for p in self.projections}
        return ReplayResult(
            digests={name: digest_of(snap) for name, snap in snapshots.items()},
            snapshots=snapshots, messages=self.messages, events=self.events, rejected=self.rejected,
            emitted=self.emitted, errors=self.errors, last_seq=self.last, seconds=self.seconds,
        )


def replay_messages(
    messages: Iterable[Message],
    projections: list[Projection],
    *,
    total: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Fold messages (in stream order) into every projection; return digests and counts."""
    return Replayer(projections, total=total, progress=progress).feed(messages).result()


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


def iter_pairs(records: Iterable[Any]) -> Iterator[Message]:
    """(seq, data) pairs from log messages read off the stream."""
    for msg in records:
        yield msg.seq, msg.subject, msg.data
