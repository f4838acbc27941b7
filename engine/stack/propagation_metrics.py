"""Propagation metrics for ``/metrics``: how fast control commands reach the SDK instances,
and which rollouts have instances that have not caught up.

Part of the log-derived metrics (engine/stack/metrics.py, ``LogMetrics`` feeds it): the
control fold tells it each rollout's current revision, the KV bucket ``ro_acks`` what
every instance applied (engine/api/propagation.py). Series:

* ``rollout_control_propagation_seconds`` (histogram): from the log storing a control
  command to an instance applying it, one observation per instance and revision it
  applied live (heartbeats repeat a report; they are not counted again);
* ``rollout_instances_following{rollout}``: live instances (every instance follows every
  rollout's control subjects);
* ``rollout_instances_lagging{rollout}``: live instances on an older revision;
* ``rollout_instances_stale``: instances silent for longer than their TTL, not yet
  forgotten by the bucket;
* ``rollout_kill_unapplied_seconds{rollout}``: while the rollout is killed and some live
  instance has not applied the kill, the seconds since the kill was stored (else 0).
  The alert ``RolloutKillNotApplied`` (compose/prometheus/propagation.rules.yml) fires on it.

Every per-rollout series exists at 0 from the rollout's first control command.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from rollout_engine.engine.api.propagation import AckEntry, judge, read_acks
from rollout_engine.events import COMMAND_TYPES

__all__ = ["PROPAGATION_BUCKETS_S", "PropagationMetrics"]

PROPAGATION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                         30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class _Revision:
    seq: int
    killed: bool
    stored_ms: int


class PropagationMetrics:
    """The fold behind the series above; :meth:`note_command` and :meth:`observe_acks`
    are pure (unit-testable), :meth:`refresh` reads the bucket."""

    def __init__(self) -> None:
        self.current: dict[str, _Revision] = {}
        self.following: dict[str, int] = {}
        self.lagging: dict[str, int] = {}
        self.kill_unapplied_s: dict[str, float] = {}
        self.stale = 0
        self.buckets = [0] * (len(PROPAGATION_BUCKETS_S) + 1)
        self.latency_sum = 0.0
        self._observed: dict[tuple[str, str, str], int] = {}

    def note_command(self, event: Any, seq: int, stored_ms: int) -> None:
        """A control message of the log: a state command sets the rollout's current revision."""
        if isinstance(event, COMMAND_TYPES):
            self.current[event.rollout] = _Revision(seq, bool(event.after.kill_switch), stored_ms)
            self.following.setdefault(event.rollout, 0)
            self.lagging.setdefault(event.rollout, 0)
            self.kill_unapplied_s.setdefault(event.rollout, 0.0)

    def observe_acks(self, entries: Iterable[AckEntry], now_ms: int) -> None:
        """Judge every rollout against the instances' latest reports; count new latencies."""
        entries = [e for e in entries if e.ack is not None]
        present: set[tuple[str, str, str]] = set()
        for entry in entries:
            assert entry.ack is not None
            for rollout, applied in entry.ack.rollouts.items():
                key = (entry.service, entry.instance, rollout)
                present.add(key)
                if self._observed.get(key, 0) >= applied.revision:
                    continue
                self._observed[key] = applied.revision
                if applied.latency_us is not None:
                    self._latency(applied.latency_us / 1e6)
        for key in set(self._observed) - present:
            del self._observed[key]  # the instance left: forget it (memory stays bounded)
        stale = 0
        for rollout, revision in self.current.items():
            result = judge(rollout, revision.seq, entries, now_ms)
            stale = result.stale
            self.following[rollout] = result.following
            self.lagging[rollout] = result.lagging
            late = revision.killed and result.lagging > 0
            self.kill_unapplied_s[rollout] = max(0.0, (now_ms - revision.stored_ms) / 1000) if late else 0.0
        if not self.current:
            stale = judge("", 0, entries, now_ms).stale
        self.stale = stale

    def _latency(self, seconds: float) -> None:
        index = next((i for i, le in enumerate(PROPAGATION_BUCKETS_S) if seconds <= le), len(PROPAGATION_BUCKETS_S))
        self.buckets[index] += 1
        self.latency_sum += seconds

    async def refresh(self, js: JetStreamContext) -> None:
        """Read every instance's report and judge (after the control fold caught up)."""
        self.observe_acks(await read_acks(js), time.time_ns() // 1_000_000)

    def collect(self) -> Iterator[Metric]:
        following = GaugeMetricFamily("rollout_instances_following", "Live SDK instances following the rollout's "
                                      "control subjects (reported within their TTL).", labels=["rollout"])
        lagging = GaugeMetricFamily("rollout_instances_lagging", "Live SDK instances that have not applied the "
                                    "rollout's current control revision.", labels=["rollout"])
        unapplied = GaugeMetricFamily("rollout_kill_unapplied_seconds", "Seconds since the rollout's current kill "
                                      "switch was stored while a live instance has not applied it (0: none lags).",
                                      labels=["rollout"])
        for rollout in sorted(self.current):
            following.add_metric([rollout], self.following.get(rollout, 0))
            lagging.add_metric([rollout], self.lagging.get(rollout, 0))
            unapplied.add_metric([rollout], self.kill_unapplied_s.get(rollout, 0.0))
        yield from (following, lagging, unapplied)
        yield GaugeMetricFamily("rollout_instances_stale", "SDK instances silent for longer than their TTL "
                                "(crashed or cut off), until the acknowledgement bucket forgets them.", value=self.stale)
        cumulative, buckets = 0, []
        for le, n in zip((*PROPAGATION_BUCKETS_S, float("inf")), self.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if le == float("inf") else repr(le), cumulative))
        yield HistogramMetricFamily("rollout_control_propagation_seconds",
                                    "From the log storing a control command to an SDK instance applying it.",
                                    buckets=buckets, sum_value=self.latency_sum)
