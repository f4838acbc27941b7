"""An OpenFeature provider over :class:`RolloutClient`: flag evaluation by the CNCF standard API.

A service that already evaluates flags through OpenFeature keeps its code and gets the
engine's sticky assignment, kill switch and canary stats::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from rollout_engine.engine.sdk import RolloutClient
    from rollout_engine.engine.sdk.openfeature import RolloutProvider

    async with RolloutClient(producer="planner") as rollout:
        api.set_provider(RolloutProvider(rollout))
        flags = api.get_client()
        variant = flags.get_string_value("planner-v2", "baseline", EvaluationContext(targeting_key=user_id))

The flag key is the rollout id and the targeting key is the unit. A string flag resolves
to the served variant's name (``ControlState.baseline``/``candidate``); a boolean flag to
"is this unit served the candidate". The value is exactly what ``RolloutClient.assign()``
returns for the same unit: same state, same murmur3 bucket.

Reasons (OpenFeature's own codes):

* ``SPLIT``: the canary percentage split the traffic (0 < pct) and the unit's bucket chose;
* ``DEFAULT``: the canary is at 0% (or the rollout was never configured): baseline;
* ``DISABLED``: the kill switch is on: baseline for everyone;
* ``STALE``: NATS is away and the last state read from the log is served (the engine may
  have changed it since). Not ``ERROR``: the OpenFeature SDK replaces the value of any
  resolution carrying an error code by the caller's default and skips the after hooks,
  so a NATS blip would move every canary unit to the default and lose its decisions;
  the SDK's ``assign()`` keeps serving the cached state too, and so does this provider;
* ``ERROR`` with ``PROVIDER_NOT_READY``: the engine was never reached (a client started
  with ``allow_offline=True`` before NATS answered): no engine state exists, so the
  caller's default is served. Also ``TARGETING_KEY_MISSING``, ``INVALID_CONTEXT`` (a bad
  unit), ``FLAG_NOT_FOUND`` (a key that is not a rollout id), ``TYPE_MISMATCH`` (number
  and object flags: a rollout serves variant names).

Flag metadata: ``decision_id`` (join outcomes to it), ``control_revision`` (log sequence
of the control command that set the state: it grows with every change, whoever made
it; 0 before any), ``config_version`` (the state's own counter, which Decisions carry),
``policy_version``, ``canary_pct``, ``bucket``, ``propensity``, ``kill_switch`` and ``stale``.

The provider's hook (:class:`DecisionHook`, returned by ``get_provider_hooks`` so it runs
for every evaluation) records the Decision after each successful evaluation, with the
``decision_id`` of the metadata: canary stats need no extra call. Outcomes and metrics
stay on the SDK (``record_outcome``/``record_metric``); OpenFeature *tracking* maps to
outcomes: ``track("win"|"loss"|"neutral"|"inconclusive", ctx, TrackingEventDetails(
value=quality, attributes={"flag": key, "decision_id": id, "variant": v}))``. A tracking
event that is not a verdict, or lacks those attributes, raises ``ValueError`` (an
outcome joins one decision; a guess would corrupt the canary stats). docs/sdk.md has more.

Needs the ``openfeature`` extra (``pip install 'rollout-engine[openfeature]'``); the rest
of the SDK room does not.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEventDetails
    from openfeature.exception import ErrorCode
    from openfeature.flag_evaluation import FlagEvaluationDetails, FlagResolutionDetails, Reason
    from openfeature.hook import Hook, HookContext, HookHints
    from openfeature.provider import AbstractProvider, Metadata
    from openfeature.track import TrackingEventDetails
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "rollout_engine.engine.sdk.openfeature needs the OpenFeature SDK, which the slim install "
        "leaves out: pip install 'rollout-engine[openfeature]' (or add openfeature-sdk>=0.8)"
    ) from exc

from rollout_engine.engine.sdk.assignment import bucket, split_of
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.events import ControlState
from rollout_engine.events.ids import is_token, new_event_id

__all__ = ["PROVIDER_NAME", "DecisionHook", "RolloutProvider"]

log = logging.getLogger(__name__)

PROVIDER_NAME = "rollout-engine"
VERDICTS = ("win", "loss", "neutral", "inconclusive")
_UNIT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_REASONS = {"canary": Reason.SPLIT, "kill_switch": Reason.DISABLED}


def _error(value: Any, code: ErrorCode, message: str) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(value=value, reason=Reason.ERROR, error_code=code, error_message=message)


class RolloutProvider(AbstractProvider):
    """OpenFeature provider resolving rollouts from a started :class:`RolloutClient`.

    The client stays the caller's (start and close it yourself); the provider only reads
    its control state and, through :class:`DecisionHook`, records decisions on it.
    """

    def __init__(self, client: RolloutClient) -> None:
        super().__init__()
        self.client = client
        self.hook = DecisionHook(client)
        self._chained: Any = None

    # --- lifecycle ----------------------------------------------------------------------
    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def get_provider_hooks(self) -> list[Hook]:
        return [self.hook]

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Forward every control change as PROVIDER_CONFIGURATION_CHANGED (flag = rollout)."""
        self._chained = self.client.on_change
        self.client.on_change = self._on_change

    def shutdown(self) -> None:
        if self.client.on_change == self._on_change:
            self.client.on_change = self._chained

    def _on_change(self, rollout: str, state: ControlState) -> Any:
        self.emit_provider_configuration_changed(ProviderEventDetails(
            flags_changed=[rollout],
            message=f"control state of {rollout}: canary {state.canary_pct:g}%, kill switch "
                    f"{'on' if state.kill_switch else 'off'}",
            metadata={"control_revision": self.client.control_seq(rollout), "config_version": state.config_version},
        ))
        return self._chained(rollout, state) if self._chained is not None else None

    # --- resolution -----------------------------------------------------------------------
    def _resolve(self, flag_key: str, default: Any, context: EvaluationContext | None,
                 as_bool: bool) -> FlagResolutionDetails[Any]:
        if not is_token(flag_key) or flag_key.startswith("_"):
            return _error(default, ErrorCode.FLAG_NOT_FOUND,
                          f"flag key {flag_key!r} is not a rollout id (1-64 of A-Z a-z 0-9 _ -, not starting with '_')")
        unit = context.targeting_key if context is not None else None
        if not unit:
            return _error(default, ErrorCode.TARGETING_KEY_MISSING,
                          f"flag {flag_key!r}: pass the unit (user, session, request) as the targeting key")
        if not isinstance(unit, str) or _UNIT.fullmatch(unit) is None:
            return _error(default, ErrorCode.INVALID_CONTEXT,
                          f"targeting key {unit!r}: expected 1-256 printable characters")
        extra = context.attributes.get("context") if context is not None else None
        if extra is not None and not is_token(extra):
            return _error(default, ErrorCode.INVALID_CONTEXT,
                          f"attribute 'context' {extra!r}: expected 1-64 of A-Z a-z 0-9 _ -")
        client = self.client
        if not client.synced:
            return _error(default, ErrorCode.PROVIDER_NOT_READY,
                          "the rollout engine has not been reached yet (NATS unreachable since start): "
                          "no control state to serve, so your default is served")
        state = client.state(flag_key)
        b = bucket(flag_key, unit)
        choice = split_of(state).pick(b)
        stale = not client.connected
        if stale:
            reason = Reason.STALE
        elif choice.reason == "default" and state.canary_pct <= 0:
            reason = Reason.DEFAULT
        else:
            reason = _REASONS.get(choice.reason, Reason.SPLIT)
        metadata: dict[str, bool | int | float | str] = {
            "decision_id": new_event_id(),
            "control_revision": client.control_seq(flag_key),
            "config_version": state.config_version,
            "policy_version": state.policy_version,
            "canary_pct": state.canary_pct,
            "bucket": b,
            "propensity": choice.propensity,
            "kill_switch": state.kill_switch,
            "stale": stale,
        }
        if extra is not None:
            metadata["context"] = extra
        value = (choice.variant == state.candidate and not state.kill_switch) if as_bool else choice.variant
        return FlagResolutionDetails(value=value, reason=reason, variant=choice.variant, flag_metadata=metadata,
                                     error_message="the rollout engine is unreachable; serving the last state "
                                                   "read from the log" if stale else None)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, as_bool=False)

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, as_bool=True)

    def _mismatch(self, flag_key: str, default: Any) -> FlagResolutionDetails[Any]:
        return _error(default, ErrorCode.TYPE_MISMATCH,
                      f"flag {flag_key!r} is a rollout: evaluate it as a string (variant name) or a boolean (candidate?)")

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[int]:
        return self._mismatch(flag_key, default_value)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[float]:
        return self._mismatch(flag_key, default_value)

    def resolve_object_details(
        self, flag_key: str, default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._mismatch(flag_key, default_value)

    # --- tracking -> outcomes ---------------------------------------------------------------
    def track(self, tracking_event_name: str, evaluation_context: EvaluationContext | None = None,
              tracking_event_details: TrackingEventDetails | None = None) -> None:
        """Record an Outcome: the event name is the verdict, ``value`` the quality, and the
        attributes ``flag``, ``decision_id`` and ``variant`` join it to its decision."""
        attributes = dict(tracking_event_details.attributes) if tracking_event_details else {}
        missing = [k for k in ("flag", "decision_id", "variant") if not isinstance(attributes.get(k), str)]
        if tracking_event_name not in VERDICTS or missing:
            raise ValueError(
                f"tracking event {tracking_event_name!r}: the rollout-engine provider maps tracking to outcomes; "
                f"name one of {VERDICTS} and give attributes flag, decision_id and variant "
                f"(from the evaluation's flag metadata; missing: {missing or 'none'})"
            )
        quality = tracking_event_details.value if tracking_event_details else None
        confidence = attributes.get("confidence")
        coro = self.client.record_outcome(
            str(attributes["flag"]), str(attributes["decision_id"]), str(attributes["variant"]), tracking_event_name,
            quality=quality, confidence=confidence if isinstance(confidence, int | float) else None,
        )
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("rollout OpenFeature provider: outcome not recorded: %s", task.exception())


class DecisionHook(Hook):
    """Records the Decision of each successful evaluation on the client (after hook).

    The provider resolved the variant; the hook re-derives it through ``decide()`` with
    the same decision id. Evaluation is synchronous, so no control change can land in
    between; should the variants still differ, the warning says so (what the service
    served and what was recorded must match for canary stats to be right).
    """

    def __init__(self, client: RolloutClient) -> None:
        self.client = client

    def after(self, hook_context: HookContext, details: FlagEvaluationDetails[Any], hints: HookHints) -> None:
        meta = details.flag_metadata
        decision_id = meta.get("decision_id")
        if details.error_code is not None or not isinstance(decision_id, str):
            return
        context = meta.get("context")
        decision = self.client.decide(
            details.flag_key, str(hook_context.evaluation_context.targeting_key),
            context=context if isinstance(context, str) else None, decision_id=decision_id,
        )
        if decision.variant != details.variant:
            log.warning("rollout OpenFeature provider: %s served %s but recorded %s (control state changed "
                        "during the evaluation)", details.flag_key, details.variant, decision.variant)
