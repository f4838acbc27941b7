"""Control state: the fold of control commands into each rollout's current ControlState.

Every control command (KillSwitch, Resume, ConfigChange) carries the state after it, so
the fold is "the latest command wins" in log order. The SDK folds the same commands it
receives live; the ``control`` consumer keeps the KV bucket in step for readers of any
language and for dashboards.
"""

from __future__ import annotations

import msgspec

from rollout_engine.events import AnyEvent, ConfigChange, ControlState, Event, KillSwitch, Resume

__all__ = ["ControlProjection", "apply_command"]

COMMANDS = (KillSwitch, Resume, ConfigChange)


def apply_command(states: dict[str, ControlState], event: AnyEvent) -> ControlState | None:
    """Fold one event into ``states``; return the rollout's new state if it changed."""
    if isinstance(event, COMMANDS):
        after = event.after
        if states.get(event.rollout) != after:
            states[event.rollout] = after
            return after
    return None


class _Snapshot(msgspec.Struct, array_like=True):
    states: dict[str, ControlState]
    changed: list[str]


class ControlProjection:
    """Projection of control commands; ``changed`` lists rollouts to push to KV."""

    name = "control"

    def __init__(self) -> None:
        self.states: dict[str, ControlState] = {}
        self.changed: set[str] = set()

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        if apply_command(self.states, event) is not None:
            self.changed.add(event.rollout)
        return []

    def snapshot(self) -> bytes:
        ordered = dict(sorted(self.states.items()))
        return msgspec.msgpack.encode(_Snapshot(ordered, sorted(self.changed)))

    def restore(self, data: bytes) -> None:
        snap = msgspec.msgpack.decode(data, type=_Snapshot)
        self.states = dict(snap.states)
        self.changed = set(snap.changed)
