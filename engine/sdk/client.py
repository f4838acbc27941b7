"""RolloutClient: the producer SDK services use to take part in a rollout.

::

    async with RolloutClient(load_settings(), producer="checkout") as client:
        variant = client.assign("checkout-v2", user_id)          # sync, no network
        result = await client.shadow("checkout-v2", user_id, baseline=v1, candidate=v2)
        await client.record_outcome("checkout-v2", decision_id, variant, "win")

* ``assign``/``decide`` hash the unit into a bucket (``engine.sdk.assignment``) against
  the live control state held in memory, build the Decision and buffer it: no round trip.
* Control state follows the log (``engine.sdk.follower``): read up to the end of the log
  before :meth:`start` returns, then pushed as each command is published.
* ``shadow`` runs the variant that was not served beside the one that was
  (``engine.sdk.shadow``); ``choose`` picks a bandit arm (``engine.sdk.choice``).
* Events go through ``engine.sdk.publisher`` (batches, acks, dedupe ids, SQLite outbox).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.assignment import bucket
from rollout_engine.engine.sdk.choice import BanditChooser
from rollout_engine.engine.sdk.connection import SdkConnection
from rollout_engine.engine.sdk.publisher import BufferFull
from rollout_engine.engine.sdk.shadow import Differ, Observed, compare, invoke, observe
from rollout_engine.events import (
    ControlState,
    Decision,
    Event,
    EventError,
    Metric,
    Outcome,
    ShadowResult,
    subjects,
    validate,
)
from rollout_engine.events.ids import check_token, new_event_id

__all__ = ["BufferFull", "RolloutClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_UNIT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_FAILED = object()
"""Marks a served variant that raised (its exception went to the caller)."""


class RolloutClient(SdkConnection):
    """Async producer client; use as ``async with RolloutClient(...) as client``.

    The constructor's arguments are :class:`engine.sdk.connection.SdkConnection`'s
    (settings, producer, outbox, batching, ``on_change``, ``allow_offline``); this class
    adds what a service calls: assign/decide, choose, shadow, record_outcome/record_metric.
    """

    @functools.cached_property
    def _subjects(self) -> dict[tuple[str, str], str]:
        """Event subjects already built (and their rollout ids checked)."""
        return {}

    @functools.cached_property
    def _bandit(self) -> BanditChooser:
        """Bandit views this client follows (``choose``)."""
        return BanditChooser()

    @functools.cached_property
    def _bandit_watched(self) -> set[str]:
        return set()

    def _count(self, decision: Decision) -> None:
        """Count a selection (moved to ``rollout_selection_total`` every second)."""
        key = (decision.rollout, decision.variant, decision.reason)
        self._selections[key] = self._selections.get(key, 0) + 1

    # --- assignment -------------------------------------------------------------------
    def _subject(self, rollout: str, kind: str) -> str:
        key = (rollout, kind)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self._subjects[key] = subjects.event(rollout, kind)  # validates the rollout id
        return subject

    def decide(self, rollout: str, unit: str, *, context: str | None = None, decision_id: str | None = None) -> Decision:
        """Choose the unit's variant, buffer the Decision, and return it (``.variant``,
        ``.id`` to join outcomes, ``.reason``, ``.propensity``). Synchronous, no I/O.

        Raises EventError for a bad rollout or unit id, BufferFull when publishing is behind.
        """
        publisher = self._publisher_or_raise()
        decision, subject, _ = self._decision(rollout, unit, context, decision_id)
        publisher.add(decision, subject)
        self._count(decision)
        return decision

    def _decision(
        self, rollout: str, unit: str, context: str | None, decision_id: str | None
    ) -> tuple[Decision, str, ControlState]:
        subject = self._subject(rollout, "decision")
        if type(unit) is not str or _UNIT.fullmatch(unit) is None:
            raise EventError("unit", f"expected 1-256 printable characters, got {unit!r}")
        if context is not None:
            check_token(context, "context")
        if decision_id is not None:
            check_token(decision_id, "decision_id")
        state = self.control.state(rollout)
        choice = self.control.split(rollout).pick(bucket(rollout, unit))
        now = time.time_ns() // 1_000_000
        decision = Decision(
            id=decision_id or new_event_id(now),
            rollout=rollout,
            time_ms=now,
            producer=self.producer,
            unit=unit,
            variant=choice.variant,
            reason=choice.reason,
            canary_pct=state.canary_pct,
            config_version=state.config_version,
            propensity=choice.propensity,
            context=context,
        )
        return decision, subject, state

    def assign(self, rollout: str, unit: str, *, context: str | None = None) -> str:
        """The variant serving ``unit`` in ``rollout`` (see :meth:`decide`)."""
        return self.decide(rollout, unit, context=context).variant

    async def choose(
        self, rollout: str, unit: str, *, context: str | None = None, mode: Any = None,
        priority: float = 0.0, risk: str = "low",
    ) -> Any:
        """Pick a bandit arm locally and buffer its Decision (reason ``bandit``,
        ``forced_safe`` or ``disabled``, with its propensity; safe mode is ``dry_run``).

        Returns an ``engine.choice.Choice`` (``.variant``, ``.decision_id`` to join the
        outcome, ``.mode``, ``.execute``). The first call for a rollout starts a KV watch
        of ``bandit.<rollout>``; later calls do no I/O. Raises ``NoBanditState`` until the
        bandit consumer has published the rollout (docs/bandit.md).
        """
        chooser, watched = self._bandit, self._bandit_watched
        js = self._jetstream()
        if rollout not in watched and js is not None:
            watched.add(rollout)
            await chooser.watch(js, rollout)
        subject = self._subject(rollout, "decision")
        if type(unit) is not str or _UNIT.fullmatch(unit) is None:
            raise EventError("unit", f"expected 1-256 printable characters, got {unit!r}")
        if context is not None:
            check_token(context, "context")
        choice = chooser.choose(rollout, unit, context=context, mode=mode, priority=priority, risk=risk)
        state = self.state(rollout)
        decision = chooser.decision(choice, producer=self.producer, canary_pct=state.canary_pct,
                                    config_version=state.config_version)
        self._publisher_or_raise().add(decision, subject)
        self._count(decision)
        return choice

    # --- shadow compare ---------------------------------------------------------------
    async def shadow(
        self,
        rollout: str,
        unit: str,
        *,
        baseline: Callable[[], T | Awaitable[T]],
        candidate: Callable[[], T | Awaitable[T]],
        differ: Differ | None = None,
        timeout: float = 1.0,
        context: str | None = None,
        decision_id: str | None = None,
    ) -> T:
        """Run the selected variant and, beside it, the other one; return the selected result.

        The Decision (with ``ShadowResult``: diff dimensions or the shadow's error) is
        emitted once the shadow finished or timed out, in the background: a slow shadow
        never delays the caller, a failing one never fails it. Under the kill switch the
        candidate does not run at all. Pass ``decision_id`` to join outcomes later.
        """
        publisher = self._publisher_or_raise()
        decision, subject, state = self._decision(rollout, unit, context, decision_id)
        self._count(decision)
        if state.kill_switch:
            await publisher.add_wait(decision, subject, self.buffer_timeout_s)
            return await invoke(baseline)
        serving_candidate = decision.reason == "canary"
        selected, other = (candidate, baseline) if serving_candidate else (baseline, candidate)
        other_name = state.baseline if serving_candidate else state.candidate
        shadow_task = asyncio.ensure_future(observe(other, timeout))
        try:
            result = await invoke(selected)
        except BaseException:
            self._spawn(self._emit_shadowed(decision, subject, shadow_task, other_name, _FAILED, serving_candidate, differ))
            raise
        self._spawn(self._emit_shadowed(decision, subject, shadow_task, other_name, result, serving_candidate, differ))
        return result

    async def _emit_shadowed(
        self,
        decision: Decision,
        subject: str,
        shadow_task: asyncio.Future[Observed],
        shadow_variant: str,
        selected_result: Any,
        serving_candidate: bool,
        differ: Differ | None,
    ) -> None:
        observed = await shadow_task
        if selected_result is _FAILED:  # nothing to compare with: record the shadow alone
            result = ShadowResult(variant=shadow_variant, latency_ms=observed.latency_ms)
            if observed.error is not None:
                result = compare(shadow_variant, observed, None, None)
        else:
            base, cand = (observed.result, selected_result) if serving_candidate else (selected_result, observed.result)
            result = compare(shadow_variant, observed, base, cand, differ)
        if result.error is not None:
            m.SHADOW_ERRORS.labels(decision.rollout).inc()
        for dimension, changed in result.diff.items():
            m.DECISION_DIFF.labels(decision.rollout, dimension, str(changed).lower()).inc()
        try:
            publisher = self._publisher_or_raise()
            await publisher.add_wait(msgspec.structs.replace(decision, shadow=result), subject, self.buffer_timeout_s)
        except Exception:
            log.exception("rollout SDK: could not record shadow decision %s", decision.id)

    # --- outcomes and metrics ---------------------------------------------------------
    async def record_outcome(
        self,
        rollout: str,
        decision_id: str,
        variant: str,
        verdict: str,
        *,
        quality: float | None = None,
        reward: float | None = None,
        confidence: float | None = None,
    ) -> Outcome:
        """Validate and buffer an Outcome; raise EventError at once for a bad field.

        Waits up to ``buffer_timeout_s`` for buffer space, then raises BufferFull.
        """
        now = time.time_ns() // 1_000_000
        outcome = _validated(
            Outcome(
                id=new_event_id(now), rollout=rollout, time_ms=now, producer=self.producer,
                decision_id=decision_id, variant=variant, verdict=verdict,  # type: ignore[arg-type]
                quality=quality, reward=reward, confidence=confidence,
            )
        )
        await self._publisher_or_raise().add_wait(outcome, self._subject(rollout, "outcome"), self.buffer_timeout_s)
        return outcome

    async def record_metric(
        self,
        rollout: str,
        variant: str,
        name: str,
        value: float,
        *,
        unit: str = "1",
        decision_id: str | None = None,
    ) -> Metric:
        """Validate and buffer a Metric (``latency_ms``, ``cost_cents``, ``error``...)."""
        now = time.time_ns() // 1_000_000
        metric = _validated(
            Metric(
                id=new_event_id(now), rollout=rollout, time_ms=now, producer=self.producer,
                variant=variant, name=name, value=value, unit=unit, decision_id=decision_id,
            )
        )
        await self._publisher_or_raise().add_wait(metric, self._subject(rollout, "metric"), self.buffer_timeout_s)
        return metric


E = TypeVar("E", bound=Event)


_HINTS = {
    "$.verdict": "verdict is one of win, loss, neutral, inconclusive",
    "$.value": "a finite number with |value| <= 1e12 (NaN and infinity are rejected)",
    "$.quality": "a finite number with |quality| <= 1e12 (NaN and infinity are rejected)",
    "$.reward": "a finite number with |reward| <= 1e12 (NaN and infinity are rejected)",
    "$.confidence": "a probability in [0, 1]",
}
_TOKEN_HINT = "ids are 1-64 characters of A-Z a-z 0-9 _ - (they become NATS subject tokens)"


def _validated(event: E) -> E:
    """Run a freshly built event through the contract's validation (constructors do not)."""
    try:
        return validate(event)  # type: ignore[return-value]
    except EventError as error:
        hint = _HINTS.get(error.field, _TOKEN_HINT if "regex" in error.rule else "")
        raise EventError(error.field, error.rule, hint) from None
