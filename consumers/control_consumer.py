"""The ``control`` consumer: control commands folded into KV ``ro_state`` ``control.<rollout>``.

Readers of any language (and dashboards) get each rollout's current
:class:`events.ControlState` (msgpack) from the KV bucket and every change pushed by a
KV watch. The fold is :class:`consumers.control.ControlProjection` ("latest command
wins"); this module makes its snapshot canonical (the set of rollouts still to push is
publishing bookkeeping, not state, so it stays out of the digest) and puts changed
rollouts after each commit. On start every rollout is put again, in case the last
process died between its commit and its puts (a put of the same value is harmless).
"""

from __future__ import annotations

import logging

import msgspec

from rollout_engine.consumers.control import ControlProjection
from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.runtime import Consumer, Runner
from rollout_engine.engine.settings import Settings
from rollout_engine.events import ControlState, check_token

__all__ = ["CanonicalControl", "build", "kv_key"]

log = logging.getLogger(__name__)

register(ConsumerSpec("control", __name__, "control commands -> KV ro_state control.<rollout>"))

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoder = msgspec.msgpack.Decoder(dict[str, ControlState])


def kv_key(rollout: str) -> str:
    """KV key of a rollout's control state: ``control.<rollout>``."""
    return "control." + check_token(rollout, "rollout")


class CanonicalControl(ControlProjection):
    """ControlProjection whose snapshot holds only the states (sorted)."""

    def snapshot(self) -> bytes:
        return _encoder.encode(dict(sorted(self.states.items())))

    def restore(self, data: bytes) -> None:
        self.states = dict(_decoder.decode(data))
        self.changed = set()


async def put_changed(runner: Runner, projection: CanonicalControl) -> None:
    """Put every changed rollout's state; keep the ones that failed for the next round."""
    if not projection.changed:
        return
    kv = await runner.kv()
    for rollout in sorted(projection.changed):
        try:
            await kv.put(kv_key(rollout), msgspec.msgpack.encode(projection.states[rollout]))
        except Exception as exc:
            log.warning("control state of %s not stored in KV: %s", rollout, exc)
            continue
        projection.changed.discard(rollout)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer control`` runs."""
    projection = CanonicalControl()

    async def on_start(runner: Runner) -> None:
        projection.changed.update(projection.states)
        await put_changed(runner, projection)

    async def after_commit(runner: Runner, result: BatchResult) -> None:
        await put_changed(runner, projection)

    return Consumer(projection, after_commit=after_commit, on_start=on_start)
