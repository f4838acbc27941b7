"""Escalation flags: repeated breaches of one kind arm a flag with a TTL.

One breach is handled by the kill switch; the *same* guard breaching again and again
(by default 3 times in 24 hours, across kills and manual re-enables) means the fix is
not working and a human should look. The flag is armed once, published as an
:class:`events.Escalation` event, and expires after ``ttl_ms`` of event time (ticks move
it), which is published too, so the KV state and dashboards follow without polling.
A flag also ends when the candidate is promoted (the fix worked) or when an operator
clears it with a reason (``rollout clear-escalation``); both are published as
``expired`` events whose reason says so.

Pure: the caller passes event time.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.rollback.policy import EscalationConfig

__all__ = ["EscalationBook", "Flag"]


class Flag(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """An armed flag: which guard, how many breaches armed it, when it expires."""

    trigger: str
    count: int
    armed_ms: int
    expires_ms: int


class EscalationBook(msgspec.Struct, array_like=True, gc=False):
    """Breach history and armed flags of one rollout."""

    history: dict[str, list[int]] = msgspec.field(default_factory=dict)
    armed: dict[str, Flag] = msgspec.field(default_factory=dict)

    def record(self, trigger: str, now_ms: int, cfg: EscalationConfig) -> Flag | None:
        """Record one conclusive breach; return the flag if this one arms it."""
        times = [t for t in self.history.get(trigger, []) if now_ms - t < cfg.window_ms]
        times.append(now_ms)
        self.history[trigger] = times
        if trigger in self.armed or len(times) < cfg.threshold:
            return None
        flag = Flag(trigger, len(times), now_ms, now_ms + cfg.ttl_ms)
        self.armed[trigger] = flag
        return flag

    def clear(self, trigger: str | None = None) -> list[Flag]:
        """End armed flags before their time (``trigger``'s, or all), in name order, with the
        breach history behind them: the detect -> escalate -> fix loop starts again."""
        gone = [self.armed.pop(name) for name in sorted(self.armed) if trigger is None or name == trigger]
        for flag in gone:
            self.history.pop(flag.trigger, None)
        return gone

    def expire(self, now_ms: int) -> list[Flag]:
        """Remove and return the flags whose time to live has passed, in name order."""
        gone = [self.armed.pop(name) for name in sorted(self.armed) if self.armed[name].expires_ms <= now_ms]
        return gone
