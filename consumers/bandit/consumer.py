"""The ``bandit`` consumer: the policy-bandit fold, published to KV for ``choose()``.

Its KV mirror (``consumers.mirror``, at most one round every 0.25 s) puts each rollout
whose view changed as its :class:`consumers.bandit.BanditView` under KV
``bandit.<rollout>`` (msgpack); SDKs watch those keys (``engine.sdk.choice.BanditChooser``).
The engine sets the ``rollout_bandit_arm_share`` gauge from each view put
(``engine/stack/consumer_runner.py``). Emitted ``Guardrail`` events (loss cooldowns)
are relayed by the runtime to ``ro.ctl.<rollout>.guardrail``.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.mirror import KvMirror
from rollout_engine.consumers.registry import ConsumerSpec, register

__all__ = ["build"]

register(ConsumerSpec("bandit", __name__, "policy bandit: outcomes joined to decisions -> KV ro_state bandit.<rollout>"))

_encoder = msgspec.msgpack.Encoder()


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer bandit`` runs (it reads no settings)."""
    projection = BanditProjection()
    mirror = KvMirror("bandit", lambda rollout: _encoder.encode(projection.view(rollout)), interval_s=0.25)
    return Consumer(projection, mirror=mirror)
