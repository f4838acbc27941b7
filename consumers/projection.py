"""The projection contract: what every projection is, and the base that holds its state.

A projection is a pure fold over the ordered log: ``apply(event, seq)`` updates its
state and returns the events it emits (commands, re-check requests...), with no I/O and
no clock. The runtime commits the changed snapshot parts, the stream position and the
emitted events in one SQLite transaction (invariant 3), then publishes the emitted
events with their deterministic ids.

Every projection of the engine subclasses :class:`RolloutProjection`, which holds the
four things they all have, so each is written once:

- **per-rollout state**: ``rollouts[rollout]``, one snapshot *part* per rollout;
- **the meta part**: engine-wide state under the key ``""`` (rollout ids are never
  empty), e.g. window settings checked on restore, or the event clock;
- **the event clock**: ``clock`` (:class:`consumers.eventtime.EventClock`), the last
  engine tick and *now*, moved by :meth:`RolloutProjection.tick` and
  :meth:`RolloutProjection.advance`;
- **the dirty set**: keys touched since the last :meth:`RolloutProjection.changed_parts`,
  so a commit costs what a batch touched, not the size of the state.

A subclass writes ``apply`` and how one part is encoded and decoded; snapshots, restores
and digests follow. The snapshot is canonical: a msgpack map of the parts in key order
(the meta part first), so two folds of one log give byte-identical snapshots and equal
digests, and a fold restored from its committed parts continues byte for byte (the
property test ``tests/unit/test_projection_contract.py`` checks it for every registered
consumer, through crashes and redeliveries).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import msgspec

from rollout_engine.consumers.eventtime import EventClock
from rollout_engine.events import AnyEvent, Event

__all__ = ["META", "Projection", "RolloutProjection", "digest_of"]

META = ""
"""Key of the engine-wide snapshot part; every other key is a rollout id (never empty)."""

S = TypeVar("S")
_encoder = msgspec.msgpack.Encoder()


@functools.cache
def _decoder(struct: type) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(struct)

_parts_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
_inline_decoder = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])


@runtime_checkable
class Projection(Protocol):
    """What the runtime, replay and the tests need of a projection."""

    name: str
    """Durable name: the JetStream consumer, the SQLite store, the registry key."""

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        """Fold one event found at stream sequence ``seq``; return what it emits."""
        ...

    def changed_parts(self) -> dict[str, bytes]:
        """Encoded parts touched since the last call (the runtime commits them)."""
        ...

    def restore_parts(self, parts: Mapping[str, bytes]) -> None:
        """Replace the state with committed parts."""
        ...

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot made by :meth:`snapshot`."""
        ...

    def digest(self) -> str:
        """Stable hash of the snapshot: equal for two folds of the same log."""
        ...


def digest_of(snapshot: bytes) -> str:
    """Stable hash of a projection snapshot (hex), for comparing two runs over one log."""
    return hashlib.blake2b(snapshot, digest_size=16).hexdigest()


def _map_header(count: int) -> bytes:
    """msgpack header of a map of ``count`` entries (what an encoder writes first)."""
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


class RolloutProjection(Generic[S]):
    """The base of every projection: per-rollout state, meta part, event clock, dirty set.

    Subclasses set ``name`` and write :meth:`apply`. A rollout's state that is one msgspec
    Struct needs only ``state_type`` (its part is that Struct, msgpack-encoded; dicts keep
    their insertion order, itself a function of the log); other states write
    :meth:`encode_rollout` / :meth:`decode_rollout`. ``clock_is_meta`` stores the whole
    event clock as the meta part; other engine-wide state writes :meth:`encode_meta` /
    :meth:`decode_meta`. ``inline_parts`` writes each part into the snapshot as the msgpack
    value it is rather than as bytes, so the control projection's snapshot reads as a
    plain map ``rollout -> ControlState``.
    """

    name: ClassVar[str]
    state_type: ClassVar[type[msgspec.Struct] | None] = None
    clock_is_meta: ClassVar[bool] = False
    inline_parts: ClassVar[bool] = False
    resting: ClassVar[Callable[[Any], bool] | None] = None
    """When one rollout's state may rest out of memory (:meth:`rests`); None: never."""
    beside: ClassVar[tuple[str, ...]] = ()
    """Attributes holding dicts keyed by rollout beside ``rollouts``: they rest with it."""
    separable: ClassVar[bool] = False
    """True when each rollout's part depends only on that rollout's messages and the ticks,
    and the meta part only on the ticks (no engine-wide clock moved by events, no state
    shared between rollouts), and :meth:`rest` forgets all of a rollout. A parallel replay
    (``engine.logtools.replay_split``) then folds shares of the rollouts in separate
    processes and merges the parts; ``tests/unit/test_replay_parallel.py`` checks the
    claim for every registered projection that makes it."""
    reads_events: ClassVar[bool] = True
    """False for a projection that folds only the engine's messages (commands, ticks): its
    :class:`consumers.folding.Folder` keeps no seen set of producer event ids (``consumers.dedupe``),
    and the one fold does not call its ``apply`` for a producer message, which it must
    ignore entirely (tests/unit/test_projection_contract.py checks it)."""

    def __init__(self) -> None:
        self.rollouts: dict[str, S] = {}
        self.clock = EventClock()
        self._dirty: set[str] = set()

    # --- what subclasses write ----------------------------------------------------------
    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        raise NotImplementedError

    def encode_rollout(self, rollout: str) -> bytes:
        """One rollout's part, canonically encoded (by default: its ``state_type`` Struct)."""
        if self.state_type is None:
            raise NotImplementedError(f"{type(self).__name__} sets no state_type: write encode_rollout")
        return _encoder.encode(self.rollouts[rollout])

    def decode_rollout(self, rollout: str, blob: bytes) -> S:
        """Inverse of :meth:`encode_rollout`."""
        if self.state_type is None:
            raise NotImplementedError(f"{type(self).__name__} sets no state_type: write decode_rollout")
        return _decoder(self.state_type).decode(blob)  # type: ignore[no-any-return]

    def encode_meta(self) -> bytes | None:
        """The engine-wide part (by default the clock, with ``clock_is_meta``), or None."""
        return _encoder.encode(self.clock) if self.clock_is_meta else None

    def decode_meta(self, blob: bytes) -> None:
        """Inverse of :meth:`encode_meta` (raise ValueError for a part made with other settings)."""
        if self.clock_is_meta:
            self.clock = _decoder(EventClock).decode(blob)

    def clear(self) -> None:
        """Forget every state (a restore starts here); subclasses reset their own fields too."""
        self.rollouts = {}
        self.clock = EventClock()
        self._dirty = set()

    def restored(self) -> None:
        """Called after a restore: rebuild what is derived from the parts (indexes, heaps)."""

    # --- resting rollouts (consumers.resident) --------------------------------------------
    def rests(self, rollout: str) -> bool:
        """Whether ``rollout``'s state may leave memory once committed (``consumers.resident``).

        Only when nothing but an event of that rollout can change it: a tick must change
        nothing for it (no timer, no time window) and no other rollout's state derives
        from it. A projection opts in with ``resting`` (a predicate on one rollout's
        state) or by overriding this; by default no rollout rests.
        """
        return self.resting is not None and self.resting(self.rollouts[rollout])

    def load_rollout(self, rollout: str, blob: bytes) -> None:
        """Bring a resting rollout back from its committed part (inverse of :meth:`rest`)."""
        self.rollouts[rollout] = self.decode_rollout(rollout, blob)

    def rest(self, rollout: str) -> None:
        """Forget a committed rollout's in-memory state (its part in the store stays the
        truth), with what ``beside`` keeps for it."""
        del self.rollouts[rollout]
        for name in self.beside:
            getattr(self, name).pop(rollout, None)

    # --- the clock and the dirty set ----------------------------------------------------
    def touch(self, key: str) -> None:
        """Mark a rollout's part (or :data:`META`) as changed, for the next commit."""
        self._dirty.add(key)

    def tick(self, time_ms: int) -> bool:
        """Record an engine tick; True (and the meta part dirty) when it moved the clock."""
        if self.clock.tick(time_ms):
            self._dirty.add(META)
            return True
        return False

    def advance(self, event: AnyEvent) -> bool:
        """Move the clock with any event (ticks and bounded event times); True when it moved."""
        if self.clock.advance(event):
            self._dirty.add(META)
            return True
        return False

    # --- parts --------------------------------------------------------------------------
    def changed_parts(self) -> dict[str, bytes]:
        """Encoded parts touched since the last call; the runtime stores each as a row."""
        dirty, self._dirty = self._dirty, set()
        out: dict[str, bytes] = {}
        for key in sorted(dirty):
            if key == META:
                meta = self.encode_meta()
                if meta is not None:
                    out[key] = meta
            elif key in self.rollouts:
                out[key] = self.encode_rollout(key)
        return out

    def _parts(self, meta: bytes | None) -> Iterator[tuple[str, bytes]]:
        """Every part in key order (``meta``, the engine-wide part, first), one at a time."""
        if meta is not None:
            yield META, meta
        for key in sorted(self.rollouts):
            yield key, self.encode_rollout(key)

    def all_parts(self) -> dict[str, bytes]:
        """Every part, canonically encoded."""
        return dict(self._parts(self.encode_meta()))

    def restore_parts(self, parts: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        """Replace the state with parts made by :meth:`changed_parts` / :meth:`all_parts`."""
        self.clear()
        for key, blob in parts.items() if isinstance(parts, Mapping) else parts:
            if key == META:
                self.decode_meta(blob)
            else:
                self.rollouts[key] = self.decode_rollout(key, blob)
        self._dirty = set()
        self.restored()

    # --- snapshots ----------------------------------------------------------------------
    def _snapshot_chunks(self) -> Iterator[bytes]:
        """The snapshot's bytes, part by part: a msgpack map of the parts in key order."""
        meta = self.encode_meta()
        return self.chunks_of(len(self.rollouts) + (meta is not None), self._parts(meta))

    def chunks_of(self, count: int, parts: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
        """Snapshot bytes of ``count`` parts given in key order (meta first): what
        ``consumers.resident`` hashes when some parts rest in the store, not in memory."""
        yield _map_header(count)
        for key, part in parts:
            yield _encoder.encode(key)
            yield part if self.inline_parts else _encoder.encode(part)

    def digest_parts(self, count: int, parts: Iterable[tuple[str, bytes]]) -> str:
        """:meth:`digest` of a state given as ``count`` parts in key order (meta first)."""
        hasher = hashlib.blake2b(digest_size=16)
        for chunk in self.chunks_of(count, parts):
            hasher.update(chunk)
        return hasher.hexdigest()

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded, built part by part into one buffer.

        For 10,000 rollouts a snapshot is ~100 MB: it is never held twice. Returns that
        ``bytearray``.
        """
        buffer = bytearray()
        for chunk in self._snapshot_chunks():
            buffer += chunk
        return buffer  # type: ignore[return-value]

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot made by :meth:`snapshot`."""
        if self.inline_parts:
            self.restore_parts({key: bytes(raw) for key, raw in _inline_decoder.decode(data).items()})
        else:
            self.restore_parts(_parts_decoder.decode(data))

    def digest(self) -> str:
        """Equals ``digest_of(self.snapshot())``, hashing part by part (the state is never held twice)."""
        meta = self.encode_meta()
        return self.digest_parts(len(self.rollouts) + (meta is not None), self._parts(meta))
