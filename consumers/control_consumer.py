"""The ``control`` consumer: control commands folded into KV ``ro_state`` ``control.<rollout>``.

Readers of any language (and dashboards) get each rollout's current
:class:`events.ControlState` (msgpack) from the KV bucket and every change pushed by a
KV watch. The fold is :class:`consumers.control.ControlProjection` ("latest command
wins"); its KV mirror (``consumers.mirror``) puts each changed rollout after every
commit (interval 0: a kill switch is in KV as soon as it is committed).
"""

from __future__ import annotations

from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.control import ControlProjection
from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.registry import ConsumerSpec, register

__all__ = ["build"]

register(ConsumerSpec("control", __name__, "control commands -> KV ro_state control.<rollout>"))


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer control`` runs (it reads no settings)."""
    projection = ControlProjection()
    mirror = KvMirror("control", projection.encode_rollout, interval_s=0.0)
    return Consumer(projection, mirror=mirror)
