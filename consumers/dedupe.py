"""De-duplication of producer events by event id, per rollout: the fold's seen set.

JetStream drops a message whose ``Nats-Msg-Id`` it stored within the stream's duplicate
window, but only when the producer sets one, and only per message. A producer that
re-sends an event without that header (or inside another batch) would have it counted
again: five sends of one outcome would be five outcomes in the canary's statistics. So the
one fold (``consumers.folding.fold_message``) asks :class:`SeenIds` before it folds each
producer event, and folds an event id of a rollout once.

The bound, and why:

- **Clock**: the store time of the message (``LogMessage.time_ms``), stamped by JetStream,
  so a producer cannot move it, and a replay of the log sees the same times as the live
  consumer did: replay, export, backtests and every consumer agree.
- **Window**: an id is a duplicate when its first copy was stored at most ``window_s``
  earlier (the engine passes the stream's duplicate window, setting ``dedupe_window_s``,
  300 s): the same promise JetStream makes for ``Nats-Msg-Id``, extended to messages
  without one. A rollout's entries older than the window are pruned each time its
  count doubles past :data:`PRUNE_MIN` (amortised O(1) per id); an entry found older
  than the window is not a duplicate, so pruning changes no decision.
- **Cap**: at most ``cap`` entries per consumer (default :data:`DEFAULT_CAP`, 200,000,
  measured at about 22 MB); beyond it the oldest entries (by store time, across
  rollouts) are evicted first, in one step down to half the cap (each eviction sorts
  the set once: a tenth at a time cost 3.1 µs per id under a sustained flood, half
  1.0 µs), so a flood of fresh
  ids costs memory once, not forever. Under a flood an id may be forgotten before its
  window ends.
- **Per rollout**: one dictionary per rollout (insertion ordered, id -> store time), so
  a message, whose events are all of its subject's rollout, costs one rollout lookup
  and then one dictionary lookup per event (measured: about 0.30 µs per new id).
- Only producer events (subjects ``ro.evt.>``) are de-duplicated. Engine commands carry
  ids derived from their cause that anyone can compute; if a producer's event could fill
  their place in the seen set it could suppress a kill. Commands are de-duplicated by
  their keyed ``Nats-Msg-Id`` and the control transitions' ``config_version`` rule.
  The policy simulator folds through ``fold_events`` with no seen set (its ids are generated once).

Exactly once across restarts: the state is a function of the ids recorded, in order
(pruning and eviction happen only when an id is recorded). :meth:`SeenIds.flush` hands
the runtime what a batch added (a delta, or now and then the whole set, so the stored
log of deltas stays within twice the set), committed in the same SQLite transaction as
the position; :meth:`SeenIds.load` rebuilds the identical set on start. Only a set made
with ``journal=True`` (the runtime's, ``Folder``'s) keeps those deltas: an offline fold
(replay, backtest, explain) never flushes, and a journal there held every id of the log
until the end, whatever the cap: a one-process replay of 400,000 bench events peaked 25-29
MB higher with it, growing with the log. Pure, no I/O.

>>> seen = SeenIds(window_s=300)
>>> [seen.first("r1", "e1", t) for t in (1_000, 2_000, 400_000)]
[True, False, True]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from rollout_engine.events import AnyEvent

__all__ = ["DEFAULT_CAP", "DEFAULT_WINDOW_S", "SeenIds", "SeenWrite"]

DEFAULT_WINDOW_S = 300.0
"""The stream's default duplicate window (setting ``dedupe_window_s``)."""
DEFAULT_CAP = 200_000
"""Entries per consumer (a 28-character id and its time in a dictionary: about 110 bytes each)."""
MIN_FULL = 10_000
"""Entries recorded since the last full write below which a batch writes only its delta."""

PRUNE_MIN = 1024
"""A rollout's ids are pruned of entries older than the window each time it doubles past this."""

_Delta = list[tuple[str, int, list[str]]]
_Full = list[tuple[str, int, list[str], list[int]]]
_encode = msgspec.msgpack.Encoder().encode
_delta = msgspec.msgpack.Decoder(_Delta)
_full = msgspec.msgpack.Decoder(_Full)


@dataclass(frozen=True, slots=True)
class SeenWrite:
    """What to store after a batch: the ids it added (``full`` False), or the whole set."""

    full: bool
    data: bytes


class _Rollout:
    """One rollout's ids (insertion ordered, each with its store time) and when to prune them."""

    __slots__ = ("ids", "prune_at")

    def __init__(self, ids: dict[str, int] | None = None, prune_at: int = PRUNE_MIN) -> None:
        self.ids: dict[str, int] = {} if ids is None else ids
        self.prune_at = prune_at


class SeenIds:
    """Event ids seen per rollout, each with the store time of its first copy (ms)."""

    __slots__ = ("_added", "_journal", "_rollouts", "_since_full", "_size", "cap", "window_ms")

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, cap: int = DEFAULT_CAP, *, journal: bool = False) -> None:
        """``journal``: keep what is recorded for :meth:`flush` (a consumer that commits its
        set); off for offline folds, which never store it."""
        if window_s <= 0 or cap < 1:
            raise ValueError(f"SeenIds needs a positive window and cap, got {window_s} s and {cap}")
        self.window_ms = int(window_s * 1000)
        self.cap = cap
        self._journal = journal
        self._rollouts: dict[str, _Rollout] = {}
        self._size = 0
        self._added: list[tuple[str, int, list[str]]] = []
        self._since_full = 0

    def __len__(self) -> int:
        return self._size

    def first(self, rollout: str, event_id: str, time_ms: int) -> bool:
        """True (and recorded) when ``event_id`` of ``rollout`` was not seen within the window."""
        return bool(self._group(rollout, [event_id], time_ms))

    def fresh(self, events: Sequence[AnyEvent], time_ms: int) -> list[AnyEvent]:
        """The events of one message (stored at ``time_ms``) not seen before, in order.

        Taken in runs of one rollout (a log message has one: ``events.origin``), each run
        recorded as one group, so the rollout is looked up once per message.
        """
        out: list[AnyEvent] = []
        start = 0
        while start < len(events):
            rollout = events[start].rollout
            end = start + 1
            while end < len(events) and events[end].rollout == rollout:
                end += 1
            run = events[start:end] if start or end < len(events) else events
            kept = self._group(rollout, [e.id for e in run], time_ms)
            if len(kept) == len(run):
                out.extend(run)
            else:
                wanted = set(kept)
                for e in run:  # a duplicate inside the message keeps its first copy only
                    if e.id in wanted:
                        wanted.discard(e.id)
                        out.append(e)
            start = end
        return out

    def _group(self, rollout: str, event_ids: list[str], time_ms: int) -> list[str]:
        """Record the new ids of one rollout stored at ``time_ms``; return them (in order)."""
        entry = self._rollouts.get(rollout)
        if entry is None:
            entry = self._rollouts[rollout] = _Rollout()
        ids, window = entry.ids, self.window_ms
        first = dict.fromkeys(event_ids, time_ms)
        if first and len(first) == len(event_ids) and ids.keys().isdisjoint(first):  # all new, the usual case
            ids.update(first)
            if self._journal:
                self._added.append((rollout, time_ms, event_ids))
            self._settle(entry, len(event_ids), time_ms)
            return event_ids
        kept = []
        renewed = 0
        for event_id in event_ids:
            stored = ids.get(event_id)
            if stored is not None:
                if time_ms - stored <= window:
                    continue
                del ids[event_id]  # seen before the window: a new event, recorded afresh
                renewed += 1
            ids[event_id] = time_ms
            kept.append(event_id)
        if kept:
            if self._journal:
                self._added.append((rollout, time_ms, kept))
            self._settle(entry, len(kept) - renewed, time_ms)
        return kept

    def _settle(self, entry: _Rollout, added: int, time_ms: int) -> None:
        """Prune and evict, at points that depend only on what was recorded (so a reload matches)."""
        self._size += added
        ids = entry.ids
        if len(ids) >= entry.prune_at:  # amortised: prune when the rollout doubled since
            oldest = time_ms - self.window_ms
            if next(iter(ids.values())) < oldest:  # the first recorded is the oldest (store times rise)
                before = len(ids)
                entry.ids = {k: t for k, t in ids.items() if t >= oldest}
                self._size -= before - len(entry.ids)
            entry.prune_at = max(2 * len(entry.ids), PRUNE_MIN)
        if self._size > self.cap:
            self._evict(self.cap // 2)

    def _evict(self, target: int) -> None:
        """Drop the oldest entries (by store time, across rollouts) until at most ``target`` are left."""
        times = sorted(t for entry in self._rollouts.values() for t in entry.ids.values())
        cutoff = times[len(times) - target - 1]  # every entry stored at or before it goes (ties too)
        for rollout in list(self._rollouts):
            entry = self._rollouts[rollout]
            entry.ids = {k: t for k, t in entry.ids.items() if t > cutoff}
            if not entry.ids:
                del self._rollouts[rollout]
            else:
                entry.prune_at = max(2 * len(entry.ids), PRUNE_MIN)
        self._size = sum(len(e.ids) for e in self._rollouts.values())

    # --- persistence -------------------------------------------------------------------------
    def flush(self) -> SeenWrite | None:
        """What the ids recorded since the last flush add to the store (None: nothing)."""
        if not self._journal:
            raise RuntimeError("SeenIds.flush() on a set made without a journal: make it with "
                               "SeenIds(..., journal=True) when its writes are stored")
        if not self._added:
            return None
        added, self._added = self._added, []
        self._since_full += sum(len(ids) for _, _, ids in added)
        if self._since_full > max(self._size, MIN_FULL):
            self._since_full = 0
            return SeenWrite(True, self.dump())
        return SeenWrite(False, _encode(added))

    def dump(self) -> bytes:
        """The whole set, in order."""
        return _encode([(r, e.prune_at, list(e.ids), list(e.ids.values())) for r, e in self._rollouts.items()])

    def load(self, writes: Iterable[SeenWrite]) -> SeenIds:
        """Rebuild the set from stored writes (a full one, then deltas), as it was when they were made."""
        for write in writes:
            if write.full:
                self._rollouts = {r: _Rollout(dict(zip(ids, times, strict=True)), prune_at)
                                  for r, prune_at, ids, times in _full.decode(write.data)}
                self._size = sum(len(e.ids) for e in self._rollouts.values())
                self._since_full = 0
                continue
            for rollout, time_ms, ids in _delta.decode(write.data):  # the same groups, the same steps
                self._group(rollout, ids, time_ms)
                self._since_full += len(ids)
        self._added = []
        return self

    def copy(self) -> SeenIds:
        """An independent copy (replay folds a log's head once per projection from one state)."""
        out = SeenIds(self.window_ms / 1000, self.cap, journal=self._journal)
        out._rollouts = {r: _Rollout(dict(e.ids), e.prune_at) for r, e in self._rollouts.items()}
        out._size, out._since_full, out._added = self._size, self._since_full, list(self._added)
        return out
