"""The ``bandit`` consumer: the policy-bandit fold, published to KV for ``choose()``.

After committed batches (at most every ``interval_s`` of wall clock: this is the
publishing edge, not the reducer) each rollout whose view changed gets its
:class:`consumers.bandit.BanditView` put under KV ``bandit.<rollout>`` (msgpack); SDKs
watch those keys (``engine.choice.BanditChooser``). Arm shares also go to the
``rollout_bandit_arm_share`` gauge. Emitted ``Guardrail`` events (loss cooldowns) are
relayed by the runtime to ``ro.ctl.<rollout>.guardrail``. On start every view is put
again, in case the last process died between its commit and its puts.
"""

from __future__ import annotations

import logging
import time

import msgspec

from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.bandit.state import kv_key
from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.runtime import Consumer, Runner
from rollout_engine.engine.settings import Settings

__all__ = ["ViewPublisher", "build"]

log = logging.getLogger(__name__)

register(ConsumerSpec("bandit", __name__, "policy bandit: outcomes joined to decisions -> KV ro_state bandit.<rollout>"))

_encoder = msgspec.msgpack.Encoder()


class ViewPublisher:
    """Throttled KV puts of changed bandit views."""

    def __init__(self, projection: BanditProjection, interval_s: float = 0.25) -> None:
        self.projection = projection
        self.interval_s = interval_s
        self.pending: set[str] = set()
        self._last = 0.0

    async def on_start(self, runner: Runner) -> None:
        self.pending.update(self.projection.rollouts)
        await self.flush(runner)

    async def after_commit(self, runner: Runner, result: BatchResult) -> None:
        self.pending |= self.projection.changed
        self.projection.changed.clear()
        now = time.monotonic()
        if self.pending and now - self._last >= self.interval_s:
            self._last = now
            await self.flush(runner)

    async def flush(self, runner: Runner) -> None:
        from rollout_engine.engine.stack.metrics import BANDIT_ARM_SHARE

        kv = await runner.kv()
        for rollout in sorted(self.pending):
            view = self.projection.view(rollout)
            try:
                await kv.put(kv_key(rollout), _encoder.encode(view))
            except Exception as exc:
                log.warning("bandit view of %s not stored in KV (kept for the next round): %s", rollout, exc)
                continue
            self.pending.discard(rollout)
            for arm, share in zip(view.arms, view.weights.get("", []), strict=False):
                BANDIT_ARM_SHARE.labels(rollout, arm).set(share)

    async def on_stop(self, runner: Runner) -> None:
        self.pending |= self.projection.changed
        if self.pending:
            await self.flush(runner)


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer bandit`` runs."""
    projection = BanditProjection()
    publisher = ViewPublisher(projection)
    return Consumer(projection, after_commit=publisher.after_commit, on_start=publisher.on_start,
                    on_stop=publisher.on_stop)
