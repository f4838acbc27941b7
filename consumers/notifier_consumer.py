"""The ``notifier`` consumer: kill switches, resumes and escalations posted to webhooks.

The fold is :class:`consumers.notifier.NotifierProjection` (delivery intents, their
outcomes read back from the log), checkpointed by the shared runtime like every other
projection; the HTTP edge is :class:`engine.stack.webhooks.Deliverer`, started by this
consumer's hooks. With no ``webhooks`` configured it folds and posts nothing.
"""

from __future__ import annotations

from rollout_engine.consumers.notifier import NotifierProjection
from rollout_engine.consumers.registry import ConsumerSpec, register
from rollout_engine.consumers.runtime import Consumer
from rollout_engine.engine.settings import Settings

__all__ = ["build"]

register(ConsumerSpec("notifier", __name__, "kill switches, resumes and escalations posted to webhooks, once each"))


def build(settings: Settings) -> Consumer:
    """The consumer ``rollout consumer notifier`` runs."""
    from rollout_engine.engine.stack.webhooks import Deliverer

    projection = NotifierProjection()
    deliverer = Deliverer(projection, settings)
    return Consumer(projection, after_commit=deliverer.after_commit, on_start=deliverer.on_start,
                    on_stop=deliverer.on_stop)
