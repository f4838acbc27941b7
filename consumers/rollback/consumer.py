"""The ``rollback`` consumer: the rollback projection run by the shared runtime.

The runtime folds the log into :class:`RollbackProjection`, commits its snapshot parts,
position and emitted commands in one SQLite transaction, and relays the commands with
their deterministic ids as ``Nats-Msg-Id``. Its KV mirror (``consumers.mirror``, at most
one round a second, beside the fold so a kill never waits behind it) puts each touched
rollout's :meth:`RollbackProjection.status` in KV ``ro_state`` under
``rollback.<rollout>``, where ``rollout status`` and the API's ``status`` read it, and
publishes it on ``ro.stats.<rollout>.eval`` (core NATS), where ``rollout status --watch``
and ``rollout wait --for healthy`` get it pushed. The commands go out under the engine's
keyed ``Nats-Msg-Id`` of their deterministic ids (``consumers/relay.py``).
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.events import subjects

__all__ = ["build"]

register(ConsumerSpec("rollback", __name__, "regression guards with statistics and hysteresis; emits kill switches",
                      kill_path=True))

_json = msgspec.json.Encoder()


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer rollback`` runs (it reads no settings)."""
    projection = RollbackProjection()
    mirror = KvMirror("rollback", lambda rollout: _json.encode(projection.status(rollout)), interval_s=1.0,
                      subject_of=subjects.evaluation)
    return Consumer(projection, mirror=mirror)
