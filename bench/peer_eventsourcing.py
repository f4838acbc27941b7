"""The peer: our workload on the ``eventsourcing`` library (9.5.6) with its SQLite backend.

An application records the events (100 per save, its fast path), then a projection
follows its notification log in pages of 1,000, maps each notification back to a domain
event, folds it with the same canary-stats reducer we use, and commits a tracking row
per page (pyeventsourcing's tracking-record pattern). Installed only for ``make bench``.
"""

from __future__ import annotations

import sqlite3
import tempfile
from typing import Any

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.harness import timed
from bench.workload import make_batches
from rollout_engine.events import AnyEvent

__all__ = ["eventsourcing_peer"]


class RolloutLog(Aggregate):
    """An aggregate whose events are the records; it keeps no state of its own."""

    @event("Observed")
    def observe(self, data: dict[str, Any]) -> None:
        pass


def eventsourcing_peer(total: int = 100_000) -> dict[str, float]:
    """Record ``total`` events, then project them; events/s of each step."""
    from rollout_engine.consumers.canary_stats import CanaryStats

    with tempfile.TemporaryDirectory(prefix="rollout-bench-es-") as tmp:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{tmp}/es.db"}
        app = Application(env=env)
        batches = list(make_batches(total))
        with timed() as write_elapsed:
            for _, _, batch in batches:
                log = RolloutLog()
                for item in batch:
                    log.observe(data=msgspec.to_builtins(item))
                app.save(log)
        write_rate = total / write_elapsed()

        projection = CanaryStats()
        tracking = sqlite3.connect(f"{tmp}/tracking.db")
        tracking.execute("CREATE TABLE tracking (name TEXT, notification_id INTEGER, PRIMARY KEY (name, notification_id))")
        seen = 0
        start = 1
        with timed() as read_elapsed:
            while True:
                page = app.recorder.select_notifications(start, 1000)
                if not page:
                    break
                for notification in page:
                    domain_event = app.mapper.to_domain_event(notification)
                    data = getattr(domain_event, "data", None)
                    if data is None:
                        continue  # the aggregate's Created event
                    projection.apply(msgspec.convert(data, AnyEvent), notification.id)
                    seen += 1
                tracking.execute("INSERT INTO tracking VALUES (?, ?)", ("peer", page[-1].id))
                tracking.commit()
                start = page[-1].id + 1
        tracking.close()
        return {"write_events_per_s": write_rate, "project_events_per_s": seen / read_elapsed(), "projected": seen}
