"""Resting rollouts: which rollouts of a projection stay in memory, and which rest in its store.

A consumer that has seen 100,000 rollouts need not hold them all: a rollout whose part
is committed (``consumers.store``) and that nothing but its own next event can change
may leave memory and be decoded again from SQLite when that event arrives. This is a
memory decision of the runtime, never of a reducer, and it changes no output: a resting
rollout is exactly its committed part, and loading it back is the restore the projection
contract already proves byte for byte (``tests/unit/test_projection_contract.py``).

The rule, the same for every consumer (setting ``resident_rollouts``, the cap):

1. **Who may rest** is the projection's to say (``RolloutProjection.rests``): a rollout a
   tick can change (a sustain or hold-down timer, a staged step, a time window: the
   rollback consumer's ``needs_tick``) stays *pinned* in memory, so a tick still visits
   every rollout that has something due; one at rest has nothing due and needs no tick.
   By default a projection lets none rest.
2. **When** is by count, never by the wall clock: after each commit, while more than
   ``cap`` rollouts are in memory, the least recently touched one that may rest goes.
   Pinned ones count but never go (the gauge shows when they alone exceed the cap).
3. **Loading** happens before a batch is folded: :meth:`Resident.prepare` reads every
   resting rollout the batch's subjects name (``ro.evt.<rollout>.*``, ``ro.ctl.<rollout>.*``;
   the log rejects a body whose rollout differs from its subject's) in one query, so the
   reducers never do I/O.
4. **Reads** (the KV mirror's values, hence the API's status) of a resting rollout load it
   for the read and let it rest again (:meth:`Resident.reading`); the digest hashes the
   resting parts straight from the store (:meth:`Resident.digest`).

Example (what the runtime does per batch, and what the tests do with a dict as the store)::

    resident = Resident(projection, cap=10_000, read=store.read_parts)
    folder = Folder(projection, resident=resident)
    result = folder.fold_batch(messages)   # prepare() loads what the batch names
    await store.commit(result.seq, result.parts, ...)
    resident.settle(result.parts)           # committed: the least recent may rest
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from rollout_engine.consumers.projection import META, RolloutProjection
from rollout_engine.events import LogMessage, subjects

__all__ = ["Reader", "Resident", "resident_for", "rollout_of"]

Reader = Callable[[Sequence[str]], Mapping[str, bytes]]
"""Committed parts of the given keys (``SQLiteConsumerStore.read_parts``; a dict's in tests)."""

T = TypeVar("T")
_NAMED = (f"{subjects.ROOT}.evt.", f"{subjects.ROOT}.ctl.")
_CHUNK = 500


def rollout_of(subject: str) -> str | None:
    """The rollout a log subject names (its third token), or None (ticks, foreign subjects)."""
    if not subject.startswith(_NAMED):
        return None
    tokens = subject.split(".", 3)
    return tokens[2] if len(tokens) == 4 else None


class Resident:
    """Keep at most ``cap`` rollouts of ``projection`` in memory; the rest rest in the store."""

    def __init__(self, projection: Any, cap: int, read: Reader) -> None:
        if not isinstance(projection, RolloutProjection):
            raise TypeError(f"{type(projection).__name__} holds no per-rollout parts: resting rollouts need a "
                            "RolloutProjection (set resident_rollouts = 0 to keep everything in memory)")
        if cap < 1:
            raise ValueError(f"a resident cap must be at least 1 rollout, got {cap}; 0 means no Resident at all")
        self.projection: RolloutProjection[Any] = projection
        self.cap = cap
        self.read = read
        self.resting: set[str] = set()
        self.recent: OrderedDict[str, None] = OrderedDict()
        """Resident rollouts that may rest, least recently touched first."""
        self.pinned: set[str] = set()
        """Resident rollouts a tick may change: they stay."""
        self.loads = 0
        self.rested = 0
        self.gauge: tuple[Any, Any] | None = None
        """(resident, resting) gauges, set after each settle and restore (:func:`resident_for`)."""

    # --- counts -------------------------------------------------------------------------
    @property
    def in_memory(self) -> int:
        """Rollouts held in memory (pinned ones included)."""
        return len(self.projection.rollouts)

    def keys(self) -> list[str]:
        """Every rollout, in memory or resting, in key order."""
        return sorted(self.resting.union(self.projection.rollouts))

    # --- the fold -----------------------------------------------------------------------
    def prepare(self, messages: Iterable[LogMessage]) -> int:
        """Load the resting rollouts ``messages`` name, in one query, before they are folded."""
        resting = self.resting
        if not resting:
            return 0
        wanted = {r for r in map(rollout_of, (m.subject for m in messages)) if r is not None and r in resting}
        if not wanted:
            return 0
        self._load(sorted(wanted))
        for key in sorted(wanted):
            self.recent[key] = None  # classified again by settle() once folded and committed
        return len(wanted)

    def settle(self, touched: Iterable[str], keep: Container[str] = ()) -> int:
        """After a commit: classify what the batch touched, then rest the least recently
        touched rollouts while more than ``cap`` are in memory. Returns how many rested.

        ``keep``: rollouts a later batch changed that is folded but not committed yet (the
        runtime's commit lane, ``consumers.lane``): their stored part is older than their
        state, so they stay in memory this time."""
        projection, recent, pinned = self.projection, self.recent, self.pinned
        rollouts = projection.rollouts
        for key in touched:
            if key == META or key not in rollouts:
                continue
            if projection.rests(key):
                pinned.discard(key)
                recent[key] = None
                recent.move_to_end(key)
            else:
                pinned.add(key)
                recent.pop(key, None)
        excess = len(rollouts) - self.cap
        dirty = projection._dirty
        rested = 0
        held: list[str] = []
        while excess > 0 and recent:
            key, _ = recent.popitem(last=False)
            if key not in rollouts:  # the fold dropped it itself
                pinned.discard(key)
                continue
            if key in dirty or key in keep:  # not committed: never rest
                held.append(key)
                continue
            projection.rest(key)
            self.resting.add(key)
            excess -= 1
            rested += 1
        for key in held:  # touched by the uncommitted batch: the most recent anyway
            recent[key] = None
        self.rested += rested
        self.count()
        return rested

    def count(self) -> None:
        """Set the gauges: rollouts in memory, rollouts resting in the store."""
        if self.gauge is not None:
            self.gauge[0].set(len(self.projection.rollouts))
            self.gauge[1].set(len(self.resting))

    def restore(self, parts: Iterable[tuple[str, bytes]]) -> None:
        """Restore committed parts one at a time (``SQLiteConsumerStore.iter_parts``),
        keeping at most ``cap`` in memory: start-up never holds every rollout at once."""
        projection = self.projection
        projection.clear()
        self.resting, self.recent, self.pinned = set(), OrderedDict(), set()
        for key, blob in parts:
            if key == META:
                projection.decode_meta(blob)
                continue
            projection.load_rollout(key, blob)
            if not projection.rests(key):
                self.pinned.add(key)
                continue
            self.recent[key] = None
            if len(projection.rollouts) > self.cap and self.recent:
                oldest, _ = self.recent.popitem(last=False)
                projection.rest(oldest)
                self.resting.add(oldest)
        projection._dirty = set()
        projection.restored()
        self.count()

    def _load(self, keys: Sequence[str]) -> None:
        parts = self.read(keys)
        missing = [key for key in keys if key not in parts]
        if missing:
            raise RuntimeError(f"{self.projection.name}: resting rollouts {missing[:5]} have no committed part in the "
                               "store; the store was changed under the running consumer. Restart it (it restores "
                               "from the store) or delete the store to rebuild from the log")
        for key in keys:
            self.projection.load_rollout(key, parts[key])
            self.resting.discard(key)
        self.loads += len(keys)

    # --- reads --------------------------------------------------------------------------
    def reading(self, value_of: Callable[[str], T]) -> Callable[[str], T]:
        """``value_of`` that sees resting rollouts too: it loads one for the read, then lets it
        rest again (a read changes nothing, so its committed part is still its state)."""
        def read(rollout: str) -> T:
            if rollout not in self.resting:
                return value_of(rollout)
            self._load([rollout])
            try:
                return value_of(rollout)
            finally:
                self.projection.rest(rollout)
                self.resting.add(rollout)
        return read

    def attach(self, mirror: Any) -> None:
        """Make a KV mirror (``consumers.mirror.KvMirror``) read resting rollouts too: a
        rollout its store lists as not yet in KV may be resting at start."""
        mirror.value_of = self.reading(mirror.value_of)

    def parts(self) -> Iterator[tuple[str, bytes]]:
        """Every part in key order (meta first): resident ones encoded, resting ones as stored."""
        projection = self.projection
        meta = projection.encode_meta()
        if meta is not None:
            yield META, meta
        keys = self.keys()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            stored = self.read([key for key in chunk if key in self.resting])
            for key in chunk:
                yield key, stored[key] if key in self.resting else projection.encode_rollout(key)

    def digest(self) -> str:
        """The projection's digest as if every rollout were in memory (``RolloutProjection.digest``)."""
        count = len(self.resting) + len(self.projection.rollouts) + (self.projection.encode_meta() is not None)
        return self.projection.digest_parts(count, self.parts())


def resident_for(consumer: Any, cap: int, read: Reader, gauge: Any, name: str) -> Resident | None:
    """The :class:`Resident` the runtime gives ``consumer`` (None when nothing of it can rest:
    cap 0, or a projection that lets no rollout rest), attached to its KV mirror, counting
    its rollouts in ``gauge`` (``rollout_consumer_rollouts{consumer,state}``) after each settle."""
    projection = consumer.projection
    if cap <= 0 or not isinstance(projection, RolloutProjection):
        return None
    if projection.resting is None and type(projection).rests is RolloutProjection.rests:
        return None
    resident = Resident(projection, cap, read)
    if consumer.mirror is not None:
        resident.attach(consumer.mirror)
    resident.gauge = (gauge.labels(name, "resident"), gauge.labels(name, "resting"))
    return resident
