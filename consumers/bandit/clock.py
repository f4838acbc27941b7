"""Event time for reducers: the latest time seen in the log, never the wall clock.

Engine ticks are authoritative. A producer event may move time forward too (so a unit
test or a log without ticks still advances), but once ticks are seen it may not run more
than ``skew_ms`` ahead of the last tick: one producer with a clock in the future cannot
expire every pending item at once.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.eventtime import MAX_AHEAD_MS, bounded
from rollout_engine.events import AnyEvent, Tick

__all__ = ["EventClock"]


class EventClock(msgspec.Struct, array_like=True, gc=False):
    """Monotone event time in ms; ``last_tick_ms`` is 0 until the first tick."""

    now_ms: int = 0
    last_tick_ms: int = 0
    skew_ms: int = MAX_AHEAD_MS

    def advance(self, event: AnyEvent) -> int:
        """Move time forward with ``event``; return the new time."""
        t = event.time_ms
        if isinstance(event, Tick):
            self.last_tick_ms = max(self.last_tick_ms, t)
        else:
            t = bounded(t, self.last_tick_ms, self.skew_ms)  # the shared clock-skew policy
        if t > self.now_ms:
            self.now_ms = t
        return self.now_ms
