"""The ``notifier`` consumer: kill switches, resumes and escalations posted to webhooks.

The fold is :class:`consumers.notifier.NotifierProjection` (delivery intents, their
outcomes read back from the log), checkpointed by the shared runtime like every other
projection; the HTTP edge is :class:`engine.stack.webhooks.Deliverer`, which engine code
hangs on this consumer's hooks (``engine/stack/consumer_runner.py``). With no
``webhooks`` configured it folds and posts nothing.
"""

from __future__ import annotations

from rollout_engine.consumers.consumer import Consumer, RuntimeSettings
from rollout_engine.consumers.notifier import NotifierProjection
from rollout_engine.consumers.registry import ConsumerSpec, register

__all__ = ["build"]

register(ConsumerSpec("notifier", __name__, "kill switches, resumes and escalations posted to webhooks, once each"))


def build(settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``rollout consumer notifier`` runs (its webhooks are the engine's edge)."""
    return Consumer(NotifierProjection())
