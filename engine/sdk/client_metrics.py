"""Prometheus metrics of the producer SDK (a planner's selection and diff counters, generalized to any rollout).

``planner_selection_total{planner, reason}`` becomes ``rollout_selection_total{rollout,
variant, reason}``; ``planner_decision_diff_total`` becomes ``rollout_decision_diff_total
{rollout, dimension, changed}``. The outbox depth and publish errors say whether the
service's events are reaching the log. Metrics live in the default registry, so a
service's own ``/metrics`` endpoint exposes them with no extra wiring.

Label children are cached: ``Counter.labels()`` costs more than the rest of ``assign()``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "CONTROL_REFUSED",
    "CONTROL_UNVERIFIED_STOPS",
    "DECISION_DIFF",
    "OUTBOX_DEPTH",
    "PUBLISHED",
    "PUBLISH_ERRORS",
    "SELECTION",
    "SHADOW_ERRORS",
    "selection_counter",
]

SELECTION = Counter(
    "rollout_selection",
    "Variants served by the SDK, by rollout, variant and reason (default, canary, kill_switch).",
    ["rollout", "variant", "reason"],
)
DECISION_DIFF = Counter(
    "rollout_decision_diff",
    "Shadow comparisons per named dimension, and whether the dimension changed.",
    ["rollout", "dimension", "changed"],
)
SHADOW_ERRORS = Counter(
    "rollout_shadow_errors",
    "Shadow runs that failed or timed out (the caller was served regardless).",
    ["rollout"],
)
OUTBOX_DEPTH = Gauge(
    "rollout_outbox_depth",
    "Events waiting in the local SQLite outbox for NATS to come back.",
    ["outbox"],
)
PUBLISH_ERRORS = Counter(
    "rollout_publish_errors",
    "Batches that failed to publish to JetStream (they went to the outbox), by cause.",
    ["cause"],
)
PUBLISHED = Counter(
    "rollout_published_events",
    "Events acknowledged by JetStream, by path (direct or outbox).",
    ["path"],
)

CONTROL_REFUSED = Counter(
    "rollout_control_refused",
    "Control commands the SDK refused and never applied, by reason: unsigned, unknown_key, bad_signature "
    "(engine/sdk/signatures.py).",
    ["reason"],
)
CONTROL_UNVERIFIED_STOPS = Counter(
    "rollout_control_unverified_stops",
    "Refused kill switches that still stopped the candidate (a stop is always safe to obey), by reason.",
    ["reason"],
)
for _reason in ("unsigned", "unknown_key", "bad_signature"):
    CONTROL_REFUSED.labels(_reason).inc(0)  # the series exist before the first refusal
    CONTROL_UNVERIFIED_STOPS.labels(_reason).inc(0)

_selection_children: dict[tuple[str, str, str], Counter] = {}


def selection_counter(rollout: str, variant: str, reason: str) -> Counter:
    """The cached ``rollout_selection_total`` child for these labels."""
    key = (rollout, variant, reason)
    child = _selection_children.get(key)
    if child is None:
        child = _selection_children[key] = SELECTION.labels(rollout, variant, reason)
    return child
