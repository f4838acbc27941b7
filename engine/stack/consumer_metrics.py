"""Prometheus metrics of the consumer runtime (one process per consumer, label ``consumer``).

Served on ``/metrics`` when ``rollout consumer NAME --metrics-port PORT`` (or the
``metrics_port`` setting) is non-zero; under ``rollout up`` the children write
prometheus-client multiprocess files instead and ``rollout up`` serves them. Names:

- ``rollout_consumer_events_total``: events folded;
- ``rollout_consumer_messages_total``: log messages folded (one may carry a batch);
- ``rollout_consumer_duplicate_deliveries_total``: deliveries skipped because their
  sequence was already committed (a redelivery after a crash or a lost ack);
- ``rollout_consumer_duplicate_events_total``: producer events not folded because their
  rollout already had their event id within the duplicate window (``consumers.dedupe``:
  a producer re-sending without ``Nats-Msg-Id``); counted, not dead-lettered;
- ``rollout_consumer_dead_letters_total{field}``: items dead-lettered, by offending field
  (``payload``, ``$.kind``, ``$.v``, ``$.value``..., ``projection`` for a fold that raised);
- ``rollout_consumer_commits_total`` and ``rollout_consumer_commit_seconds``: SQLite commits;
- ``rollout_consumer_position``: last committed stream sequence (the lag is not here: the
  engine's endpoint computes ``rollout_consumer_lag_messages`` from JetStream, so it keeps
  growing when a consumer process is down);
- ``rollout_consumer_store_errors_total{reason}``: failed commits (``locked``, ``read_only``,
  ``disk_full``, ``io_error``), each retried; ``rollout_consumer_stalled`` is 1 while
  the consumer waits for its store and takes no events;
- ``rollout_consumer_rollouts{state}``: rollouts the consumer holds, ``resident`` (in
  memory) or ``resting`` (only in its SQLite store, loaded again by their next event;
  setting ``resident_rollouts``, consumers/resident.py). ``resident`` above the setting
  means that many rollouts have a timer or time window due and cannot rest;
- ``rollout_consumer_relay_preempted_total``: emitted messages whose ``Nats-Msg-Id`` another
  publisher had used first, so JetStream did not store them; each was re-sent under a new
  id (consumers/relay.py). Anything above 0 means the message-id key leaked (docs/security.md).

The gauges take the most recent value across processes (``multiprocess_mode``), so a
restarted consumer under ``rollout up`` continues its series instead of adding one
labelled with its new ``pid``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

__all__ = ["ConsumerMetrics", "MetricsPortInUse", "metrics_port", "serve_metrics"]


class ConsumerMetrics:
    """The runtime's metrics; create once per registry (a registry refuses duplicates)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        label = ["consumer"]
        self.events = Counter("rollout_consumer_events_total", "Events folded into the projection", label, registry=reg)
        self.messages = Counter("rollout_consumer_messages_total", "Log messages folded", label, registry=reg)
        self.duplicates = Counter("rollout_consumer_duplicate_deliveries_total",
                                  "Deliveries skipped because their sequence was already committed", label, registry=reg)
        self.duplicate_events = Counter("rollout_consumer_duplicate_events_total",
                                        "Producer events not folded: their rollout had their event id within the "
                                        "duplicate window", label, registry=reg)
        self.dead = Counter("rollout_consumer_dead_letters_total", "Items dead-lettered, by offending field",
                            [*label, "field"], registry=reg)
        self.commits = Counter("rollout_consumer_commits_total", "SQLite commits (one per fetched batch)", label, registry=reg)
        self.commit_seconds = Histogram("rollout_consumer_commit_seconds", "Time of one SQLite commit", label,
                                        registry=reg, buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0))
        self.position = Gauge("rollout_consumer_position", "Last committed stream sequence", label, registry=reg,
                              multiprocess_mode="mostrecent")
        self.store_errors = Counter("rollout_consumer_store_errors_total",
                                    "Failed SQLite commits by fault (locked, read_only, disk_full, io_error); retried",
                                    [*label, "reason"], registry=reg)
        self.preempted = Counter("rollout_consumer_relay_preempted",
                                 "Emitted messages JetStream called duplicates of a message the consumer never "
                                 "published (id taken by another publisher); each is re-sent under a new id",
                                 label, registry=reg)
        self.rollouts = Gauge("rollout_consumer_rollouts", "Rollouts held in memory (resident) or only in the "
                              "SQLite store (resting)", [*label, "state"], registry=reg, multiprocess_mode="mostrecent")
        self.niceness = Gauge("rollout_consumer_niceness", "Niceness of the consumer's process (the kill path asks "
                              "for kill_path_nice, default -5: lower is a larger CPU share)", label, registry=reg,
                              multiprocess_mode="mostrecent")
        self.stalled = Gauge("rollout_consumer_stalled", "1 while the consumer waits for its store and takes no events",
                             label, registry=reg, multiprocess_mode="mostrecent")


@functools.cache
def default_metrics() -> ConsumerMetrics:
    """The process-wide metrics in the default registry (created on first use: the
    registry refuses a second set of the same names)."""
    return ConsumerMetrics()


class MetricsPortInUse(OSError):
    """The /metrics port is taken; the message says which and what to do."""


def metrics_port(flag: int | None, setting: int) -> int:
    """The port a consumer process serves ``/metrics`` on: ``--metrics-port`` if given,
    else the ``metrics_port`` setting; but 0 (none) in a child of ``rollout up``, whose own
    endpoint merges the children's multiprocess files on that same port."""
    if flag is not None:
        return flag
    return 0 if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else setting


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> tuple[Any, Any]:
    """Expose ``registry`` on ``http://HOST:PORT/metrics`` (a daemon thread); return the
    server and its thread. A taken port raises :class:`MetricsPortInUse`."""
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortInUse(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror or exc}): another process uses that port; "
            "choose a free one (--metrics-port, or the metrics_port setting, ROLLOUT_METRICS_PORT), "
            "or 0 to serve no metrics") from None
