"""What a consumer is to the runtime: its projection, its hooks, and what the engine passes in.

A consumer module registers a :class:`consumers.registry.ConsumerSpec` and exposes
``build(settings) -> Consumer``; the runtime (``consumers.runtime.Runner``) folds the
log into the projection and runs the hooks. Everything the runtime needs from outside
is handed to it by engine code, so ``consumers/`` imports nothing of the engine:

- settings, as anything with the attributes of :class:`RuntimeSettings` (the engine's
  ``Settings`` has them);
- the NATS connection (or a coroutine that makes one);
- metrics, as anything with the attributes of :class:`RuntimeMetrics` (the engine
  passes its Prometheus ``ConsumerMetrics``; without them nothing is counted).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.projection import Projection
from rollout_engine.consumers.resident import Resident
from rollout_engine.consumers.store import SQLiteConsumerStore

if TYPE_CHECKING:
    from rollout_engine.consumers.folding import BatchResult
    from rollout_engine.consumers.runtime import Runner

__all__ = [
    "NO_METRICS",
    "Consumer",
    "Hook",
    "PartitionMismatch",
    "RunSummary",
    "RuntimeMetrics",
    "RuntimeSettings",
    "StoreIncompatible",
    "store_name",
    "stored_digest",
]

Hook = Callable[["Runner", "BatchResult"], Awaitable[None]]


class RuntimeSettings(Protocol):
    """The settings the runtime reads (the engine's ``Settings`` has them all)."""

    data_dir: str | Path
    consumer_batch: int
    ack_wait_s: float
    consumer_max_deliver: int
    dedupe_window_s: float
    resident_rollouts: int


class RuntimeMetrics(Protocol):
    """The runtime's counters and gauges, each ``labels(...)`` then ``inc``/``set``/``observe``."""

    events: Any
    messages: Any
    duplicates: Any
    duplicate_events: Any
    dead: Any
    commits: Any
    commit_seconds: Any
    position: Any
    store_errors: Any
    preempted: Any
    stalled: Any
    rollouts: Any


class _Nothing:
    """A metric that records nothing."""

    def labels(self, *_labels: str) -> _Nothing:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


class _NoMetrics:
    """:class:`RuntimeMetrics` that count nothing (tests, benchmarks, library use)."""

    def __init__(self) -> None:
        nothing = _Nothing()
        self.events = self.messages = self.duplicates = self.duplicate_events = self.dead = self.commits = nothing
        self.commit_seconds = self.position = self.store_errors = self.preempted = self.stalled = nothing
        self.rollouts = nothing


NO_METRICS: RuntimeMetrics = _NoMetrics()


@dataclass
class Consumer:
    """What a consumer module builds: the projection, its KV mirror and its hooks.

    ``mirror`` (optional) keeps KV ``ro_state`` in step (``consumers.mirror``). ``on_start``
    runs once after the state is restored, ``after_commit`` after each committed batch
    and, with an empty result, when the log is idle; ``on_stop`` when the runner ends.
    """

    projection: Projection
    mirror: KvMirror | None = None
    after_commit: Hook | None = None
    on_start: Callable[[Runner], Awaitable[None]] | None = None
    on_stop: Callable[[Runner], Awaitable[None]] | None = None


class PartitionMismatch(RuntimeError):
    """The runner asks for a partition the log does not have."""


class StoreIncompatible(RuntimeError):
    """The stored snapshot does not restore into this projection (another version's)."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Where a run ended: position, events folded in this run, and the state digest."""

    consumer: str
    seq: int
    events: int
    dead_letters: int
    digest: str


def store_name(consumer: str, partition: int | None) -> str:
    """Durable consumer and store name: ``<consumer>`` or ``<consumer>_p<partition>``."""
    return consumer if partition is None else f"{consumer}_p{partition}"


def restore(projection: Projection, parts: Iterable[tuple[str, bytes]] | dict[str, bytes], where: Path,
            resident: Resident | None = None) -> None:
    """Restore committed parts (through ``resident``: at most its cap in memory), or raise
    :class:`StoreIncompatible` saying what to do."""
    try:
        if resident is not None:
            resident.restore(parts.items() if isinstance(parts, dict) else parts)
        else:
            projection.restore_parts(parts)
    except Exception as exc:
        raise StoreIncompatible(
            f"consumer {projection.name!r} cannot restore its state from {where} "
            f"({type(exc).__name__}: {exc}); it was probably written by another version. "
            f"Delete that file (and its -wal, -shm) to rebuild the projection from the log"
        ) from exc


async def stored_digest(consumer: Consumer, settings: RuntimeSettings, partition: int | None = None) -> tuple[int, str]:
    """(position, digest) of a consumer's (or one partition's) committed state, from its store alone."""
    name = store_name(consumer.projection.name, partition)
    store = SQLiteConsumerStore.for_consumer(settings.data_dir, name, exclusive=False)
    if not store.path.exists():  # nothing committed yet: the empty state (create nothing)
        return 0, consumer.projection.digest()
    async with store:
        stored = await store.load()
    restore(consumer.projection, stored.parts, store.path)
    return stored.seq, consumer.projection.digest()
