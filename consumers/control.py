"""Control state: the fold of control commands into each rollout's current ControlState.

Every control command (``events.COMMAND_TYPES``: KillSwitch, Resume, ConfigChange)
carries the state after it, so the fold is "the latest command wins" in log order. The
SDK folds the same commands it receives live (:func:`apply_command`); the ``control``
consumer keeps the KV bucket in step for readers of any language and for dashboards.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.events import COMMAND_TYPES, AnyEvent, ControlState, Event

__all__ = ["ControlProjection", "apply_command"]

_legacy_decoder = msgspec.msgpack.Decoder(dict[str, ControlState])


def apply_command(states: dict[str, ControlState], event: AnyEvent) -> ControlState | None:
    """Fold one event into ``states``; return the rollout's new state if it changed."""
    if isinstance(event, COMMAND_TYPES):
        after = event.after  # type: ignore[attr-defined]
        if states.get(event.rollout) != after:
            states[event.rollout] = after
            return after  # type: ignore[no-any-return]
    return None


class ControlProjection(RolloutProjection[ControlState]):
    """Projection ``control``: each rollout's current state, one part per rollout.

    Control state does not depend on time, so it keeps no meta part. Its snapshot is a
    plain map ``rollout -> ControlState`` (parts written inline), the same bytes the
    KV bucket's values are made of.
    """

    name = "control"
    state_type = ControlState
    inline_parts = True
    reads_events = False  # commands only: no seen set of producer event ids

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        if apply_command(self.rollouts, event) is not None:
            self.touch(event.rollout)
        return []

    @property
    def states(self) -> dict[str, ControlState]:
        """Each rollout's current control state."""
        return self.rollouts

    def decode_meta(self, blob: bytes) -> None:
        # Stores written before control kept one part per rollout hold the whole
        # snapshot under the meta key: read it, later per-rollout parts override it.
        self.rollouts.update(_legacy_decoder.decode(blob))
