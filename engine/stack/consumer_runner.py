"""The consumer runtime wired to the engine: settings, NATS, message ids, metrics, edges.

``consumers/`` imports nothing of the engine, so engine code hands the runtime what it
needs: :func:`consumer_runner` builds a :class:`consumers.runtime.Runner` with the
engine's connection (``engine.bus.connect``), the deployment's message-id key
(``engine/stack/msg_ids.py``), the runtime metrics (``engine/stack/consumer_metrics.py``)
and the edges some consumers feed (:func:`attach_edges`):

- ``rollout_recheck_pending{rollout}`` and ``rollout_recheck_oldest_age_seconds{rollout}``
  from the verification queue, after each commit (:class:`RecheckGauges`);
- ``rollout_bandit_arm_share{rollout,arm}`` from each bandit view the KV mirror puts;
- the notifier's webhook deliveries (``engine/stack/webhooks.py``).

``rollout consumer NAME`` and ``rollout up`` run consumers through it.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from nats.aio.client import Client
from prometheus_client import REGISTRY, Gauge

from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.bandit.state import BanditView
from rollout_engine.consumers.consumer import Consumer, StoreIncompatible, store_name, stored_digest
from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.notifier import NotifierProjection
from rollout_engine.consumers.runtime import Runner
from rollout_engine.consumers.store import ConsumerLocked
from rollout_engine.consumers.verification import VerificationProjection
from rollout_engine.engine.bus import connect
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.consumer_metrics import default_metrics, serve_metrics
from rollout_engine.engine.stack.metrics import BANDIT_ARM_SHARE
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys
from rollout_engine.engine.stack.webhooks import Deliverer

__all__ = ["ConsumerLocked", "RecheckGauges", "StoreIncompatible", "attach_edges", "consumer_runner", "serve_metrics",
           "stored_digest"]

_view_decoder = msgspec.msgpack.Decoder(BanditView)


class RecheckGauges:
    """``rollout_recheck_pending`` and ``rollout_recheck_oldest_age_seconds`` per rollout.

    Create once per registry (a registry refuses duplicate names) and call :meth:`update`
    after each committed batch. Alert on growth, e.g. ``rollout_recheck_oldest_age_seconds
    > 3600``: with the defaults an item closes within 20 minutes, so an older one means the
    queue is not being drained.
    """

    def __init__(self, registry: Any = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.pending = Gauge(
            "rollout_recheck_pending", "Outcomes pending re-check (verification queue depth)",
            ["rollout"], registry=reg, multiprocess_mode="livemax",
        )
        self.oldest = Gauge(
            "rollout_recheck_oldest_age_seconds", "Event-time age of the oldest pending re-check",
            ["rollout"], registry=reg, multiprocess_mode="livemax",
        )
        self._seen: set[str] = set()

    def update(self, projection: VerificationProjection) -> None:
        depth = projection.depth()
        ages = projection.oldest_age_s()
        known = self._seen | set(projection.rollouts)  # every rollout that ever queued, 0 when drained
        for rollout in known:
            self.pending.labels(rollout).set(depth.get(rollout, 0))
            self.oldest.labels(rollout).set(ages.get(rollout, 0.0))
        self._seen = known


@functools.cache
def _recheck() -> RecheckGauges:
    """The process-wide recheck gauges (the default registry refuses a second set)."""
    return RecheckGauges()


def _arm_share(_rollout: str, value: bytes) -> None:
    view = _view_decoder.decode(value)
    for arm, share in zip(view.arms, view.weights.get("", []), strict=False):
        BANDIT_ARM_SHARE.labels(view.rollout, arm).set(share)


def attach_edges(consumer: Consumer, settings: Settings) -> Consumer:
    """Hang the engine's edges on a consumer whose projection feeds one (see the module docstring)."""
    projection = consumer.projection
    if isinstance(projection, NotifierProjection):
        deliverer = Deliverer(projection, settings)
        consumer.after_commit, consumer.on_start = deliverer.after_commit, deliverer.on_start
        consumer.on_stop = deliverer.on_stop
    if isinstance(projection, VerificationProjection):
        own_commit, own_start = consumer.after_commit, consumer.on_start

        async def refresh(runner: Runner, result: BatchResult) -> None:
            if own_commit is not None:
                await own_commit(runner, result)
            _recheck().update(projection)

        async def start(runner: Runner) -> None:
            if own_start is not None:
                await own_start(runner)
            _recheck().update(projection)

        consumer.after_commit, consumer.on_start = refresh, start
    if isinstance(projection, BanditProjection) and consumer.mirror is not None:
        consumer.mirror.observers.append(_arm_share)
    return consumer


def consumer_runner(consumer: Consumer, settings: Settings, *, nc: Client | None = None,
                    partition: int | None = None, **options: Any) -> Runner:
    """A runner for ``consumer`` with the engine's connection, message ids, metrics and edges.

    ``nc`` is used when given (and left open); otherwise the runner connects with the
    engine's settings as ``consumer-<name>`` and closes the connection when it ends.
    ``options`` go to :class:`Runner` (``until_idle``, ``batch``, ``fetch_timeout``,
    ``standby``...).
    """
    name = store_name(consumer.projection.name, partition)

    options.setdefault("metrics", default_metrics())
    options.setdefault("msg_ids", EngineIds.load(settings))
    signer = options.setdefault("signer", CommandSigner.load(settings))

    async def connect_engine() -> Client:
        nc = await connect(settings, name=f"consumer-{name}")
        await publish_keys(nc.jetstream(), signer.ring)  # before the relay signs anything with it
        return nc
    return Runner(attach_edges(consumer, settings), settings, nc=nc, connect=connect_engine, partition=partition,
                  **options)
