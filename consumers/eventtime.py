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

__all__ = ["MAX_AHEAD_MS", "bounded"]

MAX_AHEAD_MS = 60_000
"""How far past the last engine tick a producer's event time may move *now*."""


def bounded(time_ms: int, tick_ms: int, ahead_ms: int = MAX_AHEAD_MS) -> int:
    """``time_ms`` capped at ``tick_ms + ahead_ms``; unchanged while no tick was seen (``tick_ms`` 0).

    >>> bounded(4_102_444_800_000, 1_700_000_000_000)  # a producer clock in 2100
    1700000060000
    """
    return time_ms if tick_ms <= 0 or time_ms <= tick_ms + ahead_ms else tick_ms + ahead_ms
