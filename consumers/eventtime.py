"""The clock-skew policy, in one place: how far a producer's clock may move event time.

Reducers never read the wall clock; *now* is the latest event time they have seen. A
producer's ``time_ms`` is its own clock, so a producer in 2099 could otherwise move a
rollout's *now* decades ahead: every time window would evict its samples, every
sustain, hold-down and expiry would be over at once, and *now* would never come back.

The policy (documented in docs/reliability.md):

- **Engine ticks are authoritative.** ``Tick`` events (``ro.tick``, every 250 ms) set
  the engine time; they are published by the engine alone (least privilege).
- **Future:** a producer event may move time at most :data:`MAX_AHEAD_MS` (60 s) past
  the last tick; it is still folded (counted, in last-N windows), at the capped time.
  Before the first tick (a unit test, a log without ticks) event time is not capped.
- **Past:** an event never moves time backwards (every reducer keeps ``max``); it is
  counted and enters last-N and all-time windows, but not a time window whose cutoff
  it is behind. It cannot restart a sustain, hold-down or expiry timer.

``bounded`` is pure and deterministic (the tick is in the log), so replay is unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import msgspec

from rollout_engine.events import AnyEvent, Tick

__all__ = ["MAX_AHEAD_MS", "DueTimers", "EventClock", "bounded"]

MAX_AHEAD_MS = 60_000
"""How far past the last engine tick a producer's event time may move *now*."""


def bounded(time_ms: int, tick_ms: int, ahead_ms: int = MAX_AHEAD_MS) -> int:
    """``time_ms`` capped at ``tick_ms + ahead_ms``; unchanged while no tick was seen (``tick_ms`` 0).

    >>> bounded(4_102_444_800_000, 1_700_000_000_000)  # a producer clock in 2100
    1700000060000
    """
    return time_ms if tick_ms <= 0 or time_ms <= tick_ms + ahead_ms else tick_ms + ahead_ms


class EventClock(msgspec.Struct, array_like=True, gc=False):
    """A projection's event time: the last engine tick and *now*, never the wall clock.

    ``last_tick_ms`` is 0 until the first tick. ``now_ms`` is the latest time seen,
    ticks and events alike, each event's time :func:`bounded` by the last tick. Every
    projection holds one (``consumers.projection.RolloutProjection.clock``); the
    bandit and verification queues persist it whole as their engine-wide part.
    """

    now_ms: int = 0
    last_tick_ms: int = 0
    skew_ms: int = MAX_AHEAD_MS

    def tick(self, time_ms: int) -> bool:
        """Record an engine tick; True when it is later than every tick before."""
        if time_ms > self.last_tick_ms:
            self.last_tick_ms = time_ms
            return True
        return False

    def bound(self, time_ms: int) -> int:
        """A producer's event time under the clock-skew policy (at most ``skew_ms`` past the last tick).

        :func:`bounded`, inlined: every projection calls this once per producer event."""
        tick = self.last_tick_ms
        return time_ms if tick <= 0 or time_ms <= tick + self.skew_ms else tick + self.skew_ms

    def advance(self, event: AnyEvent) -> bool:
        """Move *now* forward with ``event`` (a tick, or any event's bounded time); True when
        it moved the last tick or *now* (a projection's engine-wide part then changed)."""
        if type(event) is Tick:
            moved = self.tick(event.time_ms)
            t = event.time_ms
        else:
            moved = False
            t = self.bound(event.time_ms)
        if t > self.now_ms:
            self.now_ms = t
            return True
        return moved


class DueTimers:
    """What falls due at an event time: ``(due_ms, rollout, key)`` entries in a heap.

    Folds that wait for event time (a bandit join's reward wait, a verification
    re-check) push an entry and pop what :meth:`due` yields once *now* reaches it. Entries
    are not removed when their item closes early: the fold skips a popped entry whose
    item is gone or rescheduled. Not persisted: :meth:`rebuild` makes it again from the
    restored state.
    """

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, str]] = []

    def push(self, due_ms: int, rollout: str, key: str) -> None:
        heapq.heappush(self._heap, (due_ms, rollout, key))

    def due(self, now_ms: int) -> Iterator[tuple[int, str, str]]:
        """Pop entries due at ``now_ms`` in due order (an entry pushed meanwhile counts too)."""
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            yield heapq.heappop(heap)

    def rebuild(self, entries: Iterable[tuple[int, str, str]]) -> None:
        self._heap = list(entries)
        heapq.heapify(self._heap)
