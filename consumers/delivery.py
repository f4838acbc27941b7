"""Delivery order of a partitioned consumer: holes in what JetStream delivered.

A partitioned durable (``<name>_p<k>``, docs/scaling.md) filters its partition, so
stream sequences have holes by design; order is checked on the consumer's own delivery
sequence instead, and a pull lost in a reconnect shows as messages pending (undelivered
or unacked) while no fetch returns anything. Either way the runtime rewinds: it
re-creates the durable at its position + 1 (SQLite is the truth, the durable a cursor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["DeliveryOrder"]

log = logging.getLogger("rollout_engine.consumers.runtime")

STUCK_AFTER = 2
"""Idle checks in a row that saw pending messages but no delivery before a rewind."""


class DeliveryOrder:
    """The delivery sequence expected next, and how many idle checks in a row looked stuck."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.expected = 1
        self.stuck = 0

    def restart(self) -> None:
        """A new durable was created: its deliveries count from 1."""
        self.expected, self.stuck = 1, 0

    def in_order(self, msgs: Sequence[Any]) -> int:
        """How many of ``msgs`` continue the delivery sequence without a hole."""
        for index, msg in enumerate(msgs):
            if msg.metadata.sequence.consumer != self.expected:
                log.warning("%s: delivery %d arrived where %d was expected", self.name,
                            msg.metadata.sequence.consumer, self.expected)
                return index
            self.expected += 1
        return len(msgs)

    def idle(self, num_pending: int, num_ack_pending: int) -> None:
        """Count an idle check: pending messages with nothing delivered look stuck."""
        self.stuck = self.stuck + 1 if num_pending or num_ack_pending else 0

    @property
    def should_rewind(self) -> bool:
        return self.stuck >= STUCK_AFTER
