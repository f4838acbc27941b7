"""The verification-retry queue: outcomes that did not convince are re-checked.

A pure fold of the log. An ``Outcome`` that is ``inconclusive``, or whose ``confidence``
is below ``min_confidence``, opens an item for its decision (``pending_recheck`` in the
runbook). Event time drives the schedule, with ticks moving it when no traffic arrives:

    first seen t0 -> RecheckRequest attempt 1 at t0 + interval, 2 at t0 + 2*interval, ...
    attempt max_attempts at t0 + max*interval -> RecheckClosed "expired" one interval later,
    carrying its evidence (every outcome seen, oldest and newest kept when over the cap).

A later conclusive outcome for the decision closes the item as ``resolved`` at once. The
emitted events have deterministic ids (``command_id``) and ``time_ms`` equal to their due
time, so a replay emits the same events and JetStream de-duplicates a re-publish.

Defaults follow the runbook (``VERIFICATION_RETRY_INTERVAL_SECONDS=300``,
``VERIFICATION_RETRY_MAX_ATTEMPTS=3``); a rollout overrides them with the ``verification``
table of a ``BanditConfig`` event. The queue is bounded (``max_items``; the oldest item is
closed as ``evicted``; the bound is per rollout), and its depth and oldest age
(:meth:`VerificationProjection.depth`, :meth:`VerificationProjection.oldest_age_s`) are
exported by the engine as Prometheus gauges, so "pending re-checks must not grow
unbounded" is an alert rule, not a manual check.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from rollout_engine.consumers.eventtime import DueTimers
from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.events import (
    AnyEvent,
    BanditConfig,
    Event,
    Evidence,
    Metric,
    Outcome,
    RecheckClosed,
    RecheckRequest,
    command_id,
)

__all__ = [
    "VerificationPolicy",
    "VerificationProjection",
    "parse_verification_policy",
]

MAX_EVIDENCE = 16


class VerificationPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``verification`` table of a ``BanditConfig`` event."""

    retry_interval_s: Annotated[float, Meta(gt=0.0, le=7 * 24 * 3600.0)] = 300.0
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 3
    min_confidence: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.8
    max_evidence: Annotated[int, Meta(ge=2, le=MAX_EVIDENCE)] = 8


DEFAULT_POLICY = VerificationPolicy()


def parse_verification_policy(raw: object) -> VerificationPolicy:
    """Validate a ``verification`` table; raise ValueError naming the bad field."""
    try:
        return msgspec.convert(raw, VerificationPolicy)
    except msgspec.ValidationError as exc:
        raise ValueError(f"verification policy: {exc}; see docs/bandit.md") from None


class Item(msgspec.Struct, array_like=True, gc=False):
    """One decision waiting for a conclusive outcome."""

    variant: str
    first_seen_ms: int
    first_outcome: str
    attempts: int
    due_ms: int
    interval_ms: int
    max_attempts: int
    evidence: list[Evidence]


class Queue(msgspec.Struct, kw_only=True):
    """One rollout's queue: its policy, open items (in open order) and counters."""

    policy: VerificationPolicy = DEFAULT_POLICY
    items: dict[str, Item] = {}
    counters: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1




def _evidence(event: Outcome) -> Evidence:
    return Evidence(
        outcome_id=event.id, time_ms=event.time_ms, verdict=event.verdict, confidence=event.confidence,
        quality=event.quality, reward=event.reward,
    )


class VerificationProjection(RolloutProjection[Queue]):
    """Projection ``verification``: see the module docstring. ``max_items`` is per rollout.

    One snapshot part per rollout's queue, and the event clock as the meta part.
    """

    name = "verification"

    def __init__(self, max_items: int = 100_000) -> None:
        super().__init__()
        self.max_items = max_items
        self._due = DueTimers()

    @property
    def queues(self) -> dict[str, Queue]:
        """Each rollout's queue."""
        return self.rollouts

    def _queue(self, rollout: str) -> Queue:
        self._dirty.add(rollout)
        queue = self.rollouts.get(rollout)
        if queue is None:
            queue = self.rollouts[rollout] = Queue()
        return queue

    # --- the fold ---------------------------------------------------------------------
    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        out: list[Event] = []
        if self.advance(event):
            out = self._run_due(self.clock.now_ms)
        if type(event) is Metric:  # a metric moves the clock only (half of the bench workload's events)
            return out
        if isinstance(event, Outcome):
            out.extend(self._on_outcome(event))
        elif isinstance(event, BanditConfig) and event.verification is not None:
            queue = self._queue(event.rollout)
            try:
                queue.policy = parse_verification_policy(event.verification)
            except ValueError:
                queue.count("config_errors")
        return out

    @staticmethod
    def _weak(event: Outcome, policy: VerificationPolicy) -> bool:
        if event.verdict == "inconclusive":
            return True
        return event.confidence is not None and event.confidence < policy.min_confidence

    def _on_outcome(self, event: Outcome) -> list[Event]:
        rollout = event.rollout
        queue = self.rollouts.get(rollout)
        policy = queue.policy if queue is not None else DEFAULT_POLICY
        weak = self._weak(event, policy)
        item = queue.items.get(event.decision_id) if queue is not None else None
        if item is not None:
            queue = self._queue(rollout)
            self._add_evidence(item, _evidence(event), policy.max_evidence)
            if weak:
                return []
            return [self._close(rollout, event.decision_id, "resolved", event.time_ms, resolved_by=event.id)]
        if not weak:
            return []
        queue = self._queue(rollout)
        interval = int(policy.retry_interval_s * 1000)
        item = Item(
            variant=event.variant, first_seen_ms=event.time_ms, first_outcome=event.id, attempts=0,
            due_ms=event.time_ms + interval, interval_ms=interval, max_attempts=policy.max_attempts,
            evidence=[_evidence(event)],
        )
        queue.items[event.decision_id] = item
        self._due.push(item.due_ms, rollout, event.decision_id)
        queue.count("opened")
        out: list[Event] = []
        while len(queue.items) > self.max_items:
            out.append(self._close(rollout, next(iter(queue.items)), "evicted", event.time_ms))
        return out

    @staticmethod
    def _add_evidence(item: Item, evidence: Evidence, cap: int) -> None:
        item.evidence.append(evidence)
        if len(item.evidence) > cap:
            del item.evidence[1]  # keep the first (why it opened) and the newest

    def _run_due(self, now: int) -> list[Event]:
        out: list[Event] = []
        for due_ms, rollout, decision_id in self._due.due(now):
            queue = self.rollouts.get(rollout)
            item = queue.items.get(decision_id) if queue is not None else None
            if queue is None or item is None or item.due_ms != due_ms:
                continue  # closed or rescheduled: a stale heap entry
            self._dirty.add(rollout)
            if item.attempts < item.max_attempts:
                item.attempts += 1
                out.append(RecheckRequest(
                    id=command_id("recheck", rollout, decision_id, item.attempts),
                    rollout=rollout, time_ms=due_ms, producer=self.name, decision_id=decision_id,
                    variant=item.variant, attempt=item.attempts, max_attempts=item.max_attempts,
                    first_seen_ms=item.first_seen_ms, cause_id=item.first_outcome,
                ))
                queue.count("requests")
                item.due_ms = due_ms + item.interval_ms
                self._due.push(item.due_ms, rollout, decision_id)
            else:
                out.append(self._close(rollout, decision_id, "expired", due_ms))
        return out

    def _close(
        self, rollout: str, decision_id: str, status: Literal["resolved", "expired", "evicted"], time_ms: int,
        resolved_by: str | None = None,
    ) -> RecheckClosed:
        queue = self._queue(rollout)
        item = queue.items.pop(decision_id)
        queue.count(status)
        return RecheckClosed(
            id=command_id("recheck_closed", rollout, decision_id, status),
            rollout=rollout, time_ms=time_ms, producer=self.name, decision_id=decision_id,
            variant=item.variant, status=status, attempts=item.attempts, first_seen_ms=item.first_seen_ms,
            evidence=list(item.evidence), resolved_by=resolved_by,
        )

    # --- metrics ----------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        """Pending re-check items per rollout (rollouts with none are left out)."""
        return {r: len(q.items) for r, q in sorted(self.rollouts.items()) if q.items}

    def oldest_age_s(self) -> dict[str, float]:
        """Age in seconds (event time) of each rollout's oldest pending item."""
        now = self.clock.now_ms
        return {
            r: max(0, now - min(i.first_seen_ms for i in q.items.values())) / 1000.0
            for r, q in sorted(self.rollouts.items()) if q.items
        }

    # --- parts (the projection contract: one Queue per rollout, the clock as meta) --------
    # ``items`` keeps open order (a function of the log): eviction takes the oldest.
    state_type = Queue
    clock_is_meta = True

    def clear(self) -> None:
        super().clear()
        self._due = DueTimers()

    def restored(self) -> None:
        self._due.rebuild((item.due_ms, rollout, decision_id) for rollout, queue in self.rollouts.items()
                          for decision_id, item in queue.items.items())
