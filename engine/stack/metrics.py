"""The engine's Prometheus endpoint: what the log and JetStream say, plus consumer processes.

Two sources, one exposition (``rollout up`` serves it on ``Settings.metrics_port``):

* **Log-derived metrics** (:class:`LogMetrics`), computed from JetStream itself so they
  are right whatever process layout runs the consumers (and keep moving while a consumer
  is down): per-consumer lag and messages consumed (consumer info), dead letters per
  consumer (the ``RO_DLQ`` subjects), and a fold of the control subjects: kill switches,
  breaches by guard, escalations, dry-run would-kills and the detection-latency histogram
  (from the evidence's event time to the kill switch being stored in the log), and the
  time of the last tick. Pending re-checks are the verification consumer's queue depth
  (``rollout_recheck_pending``).

* **In-process metrics** of the consumer processes (the objects defined below and in the
  consumer modules), aggregated through prometheus-client's multiprocess mode: ``rollout
  up`` gives every child ``PROMETHEUS_MULTIPROC_DIR`` and the endpoint merges their files.

Labelled counters start at 0 as soon as their label set is known: a rollout's kill
switches (``auto`` and ``manual``) and dry-run would-kills when the rollout first
appears in the log (its first decision or control command), each consumer's dead
letters when the consumer exists, and the ``srm`` breaches from the start. A series
born at 1 is invisible to ``increase()`` and ``changes()``, so the first kill of a
rollout would never show on a dashboard or fire an alert.

Names follow Prometheus conventions: ``rollout_`` prefix, base units (seconds), counters
end in ``_total`` (prometheus-client appends it), and the exposition passes ``promtool
check metrics`` (tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.stack.consumer_metrics import serve_metrics as start_server
from rollout_engine.engine.stack.propagation_metrics import PropagationMetrics
from rollout_engine.events import (
    Escalation,
    KillSwitch,
    LogMessage,
    Tick,
    WouldKill,
    subjects,
)

__all__ = [
    "BANDIT_ARM_SHARE",
    "DETECTION_BUCKETS_S",
    "EVALUATIONS",
    "LogMetrics",
    "build_registry",
    "multiprocess_env",
    "serve_metrics",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DETECTION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# --- in-process metrics for consumer processes (nobody else defines these; per-consumer
# events, messages, commits and lag are engine/stack/consumer_metrics.py's) -------------------
EVALUATIONS = Counter(
    "rollout_evaluations",
    "Rollout evaluations by result (pass, hold, fail, inconclusive): on demand through the API, "
    "and by the rollback consumer when it counts them.",
    ["result"],
)
BANDIT_ARM_SHARE = Gauge(
    "rollout_bandit_arm_share",
    "Share of traffic the bandit currently gives each arm (0-1).",
    ["rollout", "arm"],
    multiprocess_mode="livemax",
)


class LogMetrics(Collector):
    """Metrics computed from JetStream: refreshed by :meth:`refresh`, read at scrape time.

    The control fold keeps its own position, so each refresh reads only the control
    messages that arrived since the last one.
    """

    def __init__(self) -> None:
        self.consumers: list[dict[str, Any]] = []
        self.dead_letters: dict[str, int] = {}
        self.log_messages = 0
        self.log_bytes = 0
        self.next_seq = 1
        self.kills: Tally[tuple[str, str]] = Tally()
        self.breaches: Tally[tuple[str, str]] = Tally()
        self.escalations: Tally[str] = Tally()
        self.would_kills: Tally[str] = Tally()
        self.latency_buckets = [0] * (len(DETECTION_BUCKETS_S) + 1)
        self.latency_sum = 0.0
        self.refreshes = 0
        self.propagation = PropagationMetrics()  # acknowledgements (engine/stack/propagation_metrics.py)
        self.rollouts: set[str] = set()
        self.last_tick_ms = 0
        for action in ("kill", "would_kill"):  # the sample-ratio-mismatch alert reads these from 0
            self.breaches[("srm", action)] += 0

    def seen(self, rollout: str) -> None:
        """A rollout is in the log: its labelled counters exist from now on, at 0."""
        if rollout in self.rollouts or rollout.startswith("_"):
            return
        self.rollouts.add(rollout)
        for source in ("auto", "manual"):
            self.kills[(rollout, source)] += 0
        self.would_kills[rollout] += 0

    # --- the fold of control messages (pure; unit-testable) --------------------------------
    def observe(self, event: Any, stored_ms: int) -> None:
        """Count one control event stored at ``stored_ms``."""
        self.seen(event.rollout)
        if isinstance(event, KillSwitch):
            source = "manual" if event.producer == "api" else "auto"
            self.kills[(event.rollout, source)] += 1
            for breach in event.breaches:
                self.breaches[(breach.guard, "kill")] += 1
            if source == "auto":
                self._latency(max(0, stored_ms - event.time_ms) / 1000)
        elif isinstance(event, WouldKill):
            self.would_kills[event.rollout] += 1
            for breach in event.breaches:
                self.breaches[(breach.guard, "would_kill")] += 1
        elif isinstance(event, Escalation) and event.state == "armed":
            self.escalations[event.trigger] += 1

    def _latency(self, seconds: float) -> None:
        index = next((i for i, le in enumerate(DETECTION_BUCKETS_S) if seconds <= le), len(DETECTION_BUCKETS_S))
        self.latency_buckets[index] += 1
        self.latency_sum += seconds

    async def refresh(self, js: JetStreamContext) -> None:
        """Read consumer info, dead-letter counts and new control messages."""
        try:
            info = await js.stream_info(subjects.LOG_STREAM)
        except NotFoundError:
            return
        self.log_messages, self.log_bytes = info.state.messages, info.state.bytes
        consumers = []
        for consumer in await js.consumers_info(subjects.LOG_STREAM):
            if not consumer.config.durable_name:
                continue  # ephemeral readers (exports, this exporter) are not consumers
            consumers.append({
                "name": consumer.name,
                "lag": consumer.num_pending or 0,
                "ack_pending": consumer.num_ack_pending or 0,
                "consumed": consumer.ack_floor.stream_seq if consumer.ack_floor else 0,
                "redelivered": consumer.num_redelivered or 0,
            })
        self.consumers = consumers
        try:
            dlq = await js.stream_info(subjects.DLQ_STREAM, subjects_filter=subjects.DLQ_ALL)
            self.dead_letters = {s.rsplit(".", 1)[-1]: int(n) for s, n in (dlq.state.subjects or {}).items()}
        except NotFoundError:
            self.dead_letters = {}
        for consumer in consumers:
            self.dead_letters.setdefault(consumer["name"], 0)
        await self._discover(js)
        self.last_tick_ms = await _last_tick_ms(js) or self.last_tick_ms
        if self.next_seq <= info.state.last_seq:
            async for msg in read_messages(js, [subjects.CONTROL_ALL], start_seq=self.next_seq):
                for event in events_of(msg):
                    self.observe(event, msg.time_ms)
                    self.propagation.note_command(event, msg.seq, msg.time_ms)
                self.next_seq = msg.seq + 1
        try:
            await self.propagation.refresh(js)
        except Exception as exc:  # no ro_acks bucket (older provisioning): the rest stays served
            log.debug("acknowledgements not read: %s", exc)
        self.refreshes += 1

    async def _discover(self, js: JetStreamContext) -> None:
        """Rollouts with decisions in the log (plain or partitioned subjects), so their
        counters are at 0 before anything happens to them."""
        for pattern in (f"{subjects.ROOT}.evt.*.decision", f"{subjects.ROOT}.evt.*.decision.*"):
            try:
                info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=pattern)
            except NotFoundError:
                return
            for subject in info.state.subjects or {}:
                with contextlib.suppress(ValueError):
                    rollout = subjects.parse(subject).rollout
                    if rollout:
                        self.seen(rollout)

    # --- exposition -------------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("rollout_consumer_lag_messages",
                                "Log messages not yet delivered to the consumer.", labels=["consumer"])
        pending = GaugeMetricFamily("rollout_consumer_ack_pending_messages",
                                    "Messages delivered to the consumer and not yet acknowledged.", labels=["consumer"])
        consumed = CounterMetricFamily("rollout_consumer_messages_consumed",
                                       "Log messages the consumer has acknowledged (its ack floor).", labels=["consumer"])
        # JetStream's num_redelivered counts messages redelivered and not yet acknowledged
        # (it drops on ack), so it is a gauge, not a counter.
        redelivered = GaugeMetricFamily("rollout_consumer_redelivery_pending_messages",
                                        "Messages JetStream delivered more than once to the consumer and that are "
                                        "not yet acknowledged.", labels=["consumer"])
        for c in self.consumers:
            lag.add_metric([c["name"]], c["lag"])
            pending.add_metric([c["name"]], c["ack_pending"])
            consumed.add_metric([c["name"]], c["consumed"])
            redelivered.add_metric([c["name"]], c["redelivered"])
        yield from (lag, pending, consumed, redelivered)
        dead = CounterMetricFamily("rollout_dead_letters", "Messages a consumer parked in RO_DLQ, with their reason.",
                                   labels=["consumer"])
        for name, n in sorted(self.dead_letters.items()):
            dead.add_metric([name], n)
        yield dead
        yield GaugeMetricFamily("rollout_log_messages", "Messages in the log stream RO_LOG.", value=self.log_messages)
        yield GaugeMetricFamily("rollout_log_bytes", "Size of the log stream RO_LOG in bytes.", value=self.log_bytes)
        if self.last_tick_ms:
            yield GaugeMetricFamily("rollout_last_tick_timestamp_seconds",
                                    "Event time of the last engine tick in the log (time stops for every window, "
                                    "sustain and cooldown when it does).", value=self.last_tick_ms / 1000)
        kills = CounterMetricFamily("rollout_kill_switches", "Kill switches in the log, by rollout and source "
                                    "(auto: the rollback consumer; manual: an operator).", labels=["rollout", "source"])
        for (rollout, source), n in sorted(self.kills.items()):
            kills.add_metric([rollout, source], n)
        yield kills
        breaches = CounterMetricFamily("rollout_breaches", "Guard breaches carried by kill switches and dry-run "
                                       "would-kills, by guard and action.", labels=["guard", "action"])
        for (guard, action), n in sorted(self.breaches.items()):
            breaches.add_metric([guard, action], n)
        yield breaches
        escalations = CounterMetricFamily("rollout_escalations", "Escalations armed, by trigger.", labels=["trigger"])
        for trigger, n in sorted(self.escalations.items()):
            escalations.add_metric([trigger], n)
        yield escalations
        would = CounterMetricFamily("rollout_would_kills", "Dry-run policies that would have killed, by rollout.",
                                    labels=["rollout"])
        for rollout, n in sorted(self.would_kills.items()):
            would.add_metric([rollout], n)
        yield would
        cumulative, buckets = 0, []
        for le, n in zip((*DETECTION_BUCKETS_S, float("inf")), self.latency_buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if le == float("inf") else repr(le), cumulative))
        yield HistogramMetricFamily("rollout_detection_latency_seconds",
                                    "From the event time of the evidence to the automatic kill switch stored in the log.",
                                    buckets=buckets, sum_value=self.latency_sum)
        yield from self.propagation.collect()


async def _last_tick_ms(js: JetStreamContext) -> int:
    """Event time of the newest tick in the log (0: none yet)."""
    try:
        msg = await js.get_last_msg(subjects.LOG_STREAM, subjects.TICK)
    except NotFoundError:
        return 0
    events = events_of(LogMessage(msg.seq or 0, msg.subject or subjects.TICK, bytes(msg.data or b"")))
    return max((e.time_ms for e in events if isinstance(e, Tick)), default=0)


def multiprocess_env(data_dir: str | Path) -> dict[str, str]:
    """A fresh multiprocess directory for the children of ``rollout up``; their env."""
    path = Path(data_dir) / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return {MULTIPROC_ENV: str(path)}


def build_registry(log_metrics: LogMetrics, multiproc_dir: str | None = None,
                   include_default: bool = True) -> CollectorRegistry:
    """The exposition: log-derived metrics, the child processes' files, this process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(log_metrics)
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    elif include_default:
        registry.register(REGISTRY)  # type: ignore[arg-type]
    return registry


async def serve_metrics(js: JetStreamContext, port: int, stop: asyncio.Event, *, host: str = "127.0.0.1",
                        interval_s: float = 5.0, multiproc_dir: str | None = None,
                        ready: asyncio.Event | None = None, collectors: tuple[Any, ...] = ()) -> int:
    """Serve ``/metrics`` on ``port`` (0 picks one) and refresh every ``interval_s``; return
    when ``stop`` is set. ``ready`` is set after the first refresh; the bound port is in
    ``LAST_PORT``. ``collectors``: more of this process's own (the supervisor's)."""
    global LAST_PORT
    metrics = LogMetrics()
    registry = build_registry(metrics, multiproc_dir or os.environ.get(MULTIPROC_ENV))
    for collector in collectors:
        registry.register(collector)
    server, thread = start_server(port, host, registry)  # a taken port raises MetricsPortInUse
    LAST_PORT = server.server_port
    try:
        while not stop.is_set():
            try:
                await metrics.refresh(js)
            except Exception as exc:  # a NATS outage must not stop the endpoint
                log.warning("metrics refresh failed: %s", exc)
            if ready is not None:
                ready.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        server.shutdown()
        thread.join(timeout=2)
    return LAST_PORT


LAST_PORT = 0
