"""The wire contract: every event the engine reads or writes, as msgspec Structs.

All events share one base (:class:`Event`) and one tag field, ``kind``, so a single
decoder turns any message into the right type. Evolution follows msgspec's rules: a new
field always has a default, nothing is reordered or retyped, and a new event kind is a
new tag (older consumers park it in dead letters instead of stopping; see
``events.codec``).

Units: times are integer milliseconds since the Unix epoch (``time_ms``); percentages
are 0-100; probabilities 0-1; every float is finite and bounded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from rollout_engine.events.fields import (
    MAX_BREACHES,
    MAX_DIMENSIONS,
    SCHEMA_VERSION,
    Count,
    DecisionReason,
    Finite,
    Id,
    OperatorAction,
    Pct,
    Prob,
    Text,
    TimeMs,
    Token,
    UnitId,
    Verdict,
    Version,
)

__all__ = [
    "COMMAND_TYPES",
    "ENGINE_ROLLOUT",
    "EVENT_TYPES",
    "KINDS",
    "PRODUCER_TYPES",
    "SCHEMA_VERSION",
    "AnyEvent",
    "BanditConfig",
    "Breach",
    "ConfigChange",
    "ControlState",
    "Decision",
    "Escalation",
    "Event",
    "Evidence",
    "Guardrail",
    "GuardrailState",
    "KillEvidence",
    "KillSwitch",
    "Metric",
    "Notification",
    "Outcome",
    "RecheckClosed",
    "RecheckRequest",
    "Resume",
    "Risk",
    "ShadowResult",
    "Tick",
    "Verdict",
    "WouldKill",
    "kind_of",
]

ENGINE_ROLLOUT = "_engine"
"""Reserved rollout id carried by engine-wide events (ticks). User rollouts never start with '_'."""

class Event(Struct, tag_field="kind", kw_only=True, frozen=True, gc=False):
    """Fields every event carries.

    ``id`` is unique and time-sortable (``events.ids.new_event_id``) and doubles as the
    JetStream ``Nats-Msg-Id`` of a single-event message.
    """

    id: Id
    v: Version = SCHEMA_VERSION
    rollout: Id
    time_ms: TimeMs
    producer: Id


# --- producer events ---------------------------------------------------------------
class ShadowResult(Struct, kw_only=True, frozen=True, gc=False):
    """What the variant that was *not* served would have done, and how it differed.

    ``diff`` maps a named dimension (for an agent planner: ``agent``, ``steps``, ``tools``,
    ``dry_run``) to whether it changed. ``error`` records a failed or timed-out shadow.
    """

    variant: Token
    diff: Annotated[dict[Token, bool], Meta(max_length=MAX_DIMENSIONS)] = {}
    error: Text | None = None
    latency_ms: Finite | None = None


class Decision(Event, tag="decision"):
    """Which variant served which unit, and why."""

    unit: UnitId
    variant: Id
    reason: DecisionReason
    canary_pct: Pct
    config_version: Count
    propensity: Prob
    shadow: ShadowResult | None = None
    dry_run: bool = False
    context: Id | None = None


class Outcome(Event, tag="outcome"):
    """How a decision turned out. ``decision_id`` joins it to its :class:`Decision`."""

    decision_id: Id
    variant: Id
    verdict: Verdict
    quality: Finite | None = None
    reward: Finite | None = None
    confidence: Prob | None = None


class Metric(Event, tag="metric"):
    """One measurement of a variant: ``latency_ms``, ``cost_cents``, ``error`` (0/1)..."""

    variant: Id
    name: Id
    value: Finite
    unit: Id = "1"
    decision_id: Id | None = None


# --- control commands (published by the engine only) ---------------------------------
class ControlState(Struct, kw_only=True, frozen=True, gc=False):
    """A rollout's control state: what every service obeys.

    Each control command carries the state before and after it, so the latest command
    alone defines the state (services need no history), and the log is an audit trail.
    """

    canary_pct: Pct = 0.0
    kill_switch: bool = False
    config_version: Count = 0
    policy_version: Count = 0
    baseline: Token = "baseline"
    candidate: Token = "candidate"
    paused: bool = False
    """Automatic progression stopped by an operator (``rollout pause``). Manual moves,
    kill switches and staged rollback still apply; ``rollout unpause`` lifts it."""


class Breach(Struct, kw_only=True, frozen=True, gc=False):
    """The numbers behind a kill switch: which guard, what was seen, against what."""

    guard: Token
    type: Token = "threshold"
    observed: Finite
    threshold: Finite
    baseline: Finite | None = None
    candidate_n: Count = 0
    baseline_n: Count = 0
    statistic: Finite | None = None
    p_value: Prob | None = None
    window: Token = "last_n"
    detail: Text = ""


MAX_MARKS = 1024
"""Samples of one judged window that get a per-sample mark (a larger window has its digest only)."""


class KillEvidence(Struct, kw_only=True, frozen=True, gc=False):
    """The events one decisive guard judged for one variant: the samples in its window.

    ``count`` samples from stream sequences ``first_seq``..``last_seq``; ``digest`` is
    the hex blake2b-128 of the samples as little-endian ``(seq int64, value float64)``
    pairs in log order, and ``marks`` holds 2 bytes per sample (the low 16 bits of the
    CRC-32 of the same pair, little-endian), so ``rollout explain`` can name the one event
    whose value changed.
    """

    guard: Token
    variant: Token
    metric: Token
    window: Token = "last_n"
    count: Count = 0
    first_seq: Count = 0
    last_seq: Count = 0
    digest: Annotated[str, Meta(pattern="^([0-9a-f]{32})?$")] = ""
    marks: Annotated[bytes, Meta(max_length=2 * MAX_MARKS)] = b""


class KillSwitch(Event, tag="kill_switch"):
    """Stop the candidate now: canary to 0 and kill switch on (``action`` ``abort`` when
    an operator did it; the rollback consumer's own kill carries no action, and names
    its ``evidence``: the samples its decisive guards judged)."""

    actor: Token
    reason: Text
    before: ControlState
    after: ControlState
    breaches: Annotated[list[Breach], Meta(max_length=MAX_BREACHES)] = []
    cause_id: Token | None = None
    action: OperatorAction | None = None
    evidence: Annotated[list[KillEvidence], Meta(max_length=2 * MAX_BREACHES)] = []


class Resume(Event, tag="resume"):
    """Lift a kill switch and re-enable the candidate at ``after.canary_pct``
    (``action`` ``retry``: at the first progression step, the rollout starts again)."""

    actor: Token
    reason: Text
    before: ControlState
    after: ControlState
    action: OperatorAction | None = None


class ConfigChange(Event, tag="config"):
    """Any other change of control state or policy, with who, why, before and after.

    ``policy`` holds a policy document (the TOML tables as a mapping); it is validated
    by the consumer that uses it, so every policy version is in the log. ``action``
    names the operator verb (``promote``, ``pause``, ``set``...).
    """

    actor: Token
    reason: Text
    before: ControlState
    after: ControlState
    policy: dict[str, Any] | None = None
    action: OperatorAction | None = None


# --- time ---------------------------------------------------------------------------
class Tick(Event, tag="tick"):
    """Engine time as an event: windows, sustain and cooldowns advance on ticks, so they
    move when no traffic arrives and replay reproduces them exactly."""

    rollout: Id = ENGINE_ROLLOUT


# --- rollback consumer outputs (ro.ctl.<rollout>.escalation | would_kill) --------------
class Escalation(Event, tag="escalation"):
    """One guard breached ``count`` times within the window (3 in 24 hours by default): the
    fix is not working, a human should look.

    ``state`` is ``armed`` until ``expires_ms`` (event time), then an ``expired`` event
    follows. ``trigger`` is the guard name, or ``inconclusive`` when a guard stayed
    inconclusive for its limit of consecutive checks.
    """

    actor: Token
    reason: Text
    trigger: Token
    state: Literal["armed", "expired"] = "armed"
    count: Count = 0
    expires_ms: TimeMs = 0
    policy_version: Count = 0
    cause_id: Token | None = None


class WouldKill(Event, tag="would_kill"):
    """A dry-run policy would have killed the candidate here; control state is untouched."""

    actor: Token
    reason: Text
    policy_name: Token
    before: ControlState
    after: ControlState
    policy_version: Count = 0
    breaches: Annotated[list[Breach], Meta(max_length=MAX_BREACHES)] = []
    cause_id: Token | None = None


# --- guardrails and verification re-checks (ro.ctl.<rollout>.guardrail | recheck) -----
Risk = Literal["low", "medium", "high"]


class GuardrailState(Struct, kw_only=True, frozen=True, gc=False):
    """The guardrail switches as state: what ``choose()`` obeys for one rollout.

    ``cooldown_until_ms`` is set by the bandit consumer when a ``loss`` follows a
    normal-mode decision; until then choices are forced back to ``safe`` mode.
    """

    bandit_enabled: bool = True
    executor_enabled: bool = True
    real_apply: bool = False
    mode_default: Literal["safe", "normal"] = "safe"
    normal_canary: bool = True
    normal_max_per_hour: Annotated[int, Meta(ge=0, le=3600)] = 1
    normal_min_priority: Prob = 0.9
    normal_allowed_risk: Annotated[tuple[Risk, ...], Meta(max_length=3)] = ("low",)
    cooldown_s: Annotated[int, Meta(ge=0, le=30 * 24 * 3600)] = 1800
    cooldown_until_ms: TimeMs = 0


class Guardrail(Event, tag="guardrail"):
    """A change of a rollout's guardrails (operator switch or automatic cooldown)."""

    actor: Token
    reason: Text
    before: GuardrailState
    after: GuardrailState
    cause_id: Token | None = None


class BanditConfig(Event, tag="bandit_config"):
    """A rollout's self-learning settings (ro.ctl.<rollout>.bandit_config).

    ``bandit`` is the policy-bandit table (arms, reward kind, floor, reward wait...),
    ``verification`` the re-check table (interval, attempts, confidence); each is
    validated by the consumer that uses it (docs/bandit.md). Kept apart from
    ``ConfigChange`` so it never touches control state or the rollback policy.
    """

    actor: Token
    reason: Text
    bandit: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None


class Evidence(Struct, kw_only=True, frozen=True, gc=False):
    """One outcome seen for an item of the verification queue."""

    outcome_id: Token
    time_ms: TimeMs
    verdict: Verdict
    confidence: Prob | None = None
    quality: Finite | None = None
    reward: Finite | None = None


class RecheckRequest(Event, tag="recheck"):
    """Re-verify decision ``decision_id``: its outcome was inconclusive or not confident."""

    decision_id: Token
    variant: Token
    attempt: Annotated[int, Meta(ge=1, le=1000)]
    max_attempts: Annotated[int, Meta(ge=1, le=1000)]
    first_seen_ms: TimeMs
    cause_id: Token | None = None


class RecheckClosed(Event, tag="recheck_closed"):
    """A verification item left the queue: ``resolved`` by a conclusive outcome,
    ``expired`` when its attempts ran out, ``evicted`` when the queue was full."""

    decision_id: Token
    variant: Token
    status: Literal["resolved", "expired", "evicted"]
    attempts: Annotated[int, Meta(ge=0, le=1000)]
    first_seen_ms: TimeMs
    evidence: Annotated[list[Evidence], Meta(max_length=16)] = []
    resolved_by: Token | None = None


# --- the notifier's delivery record (ro.ctl.<rollout>.notification) ------------------
class Notification(Event, tag="notification"):
    """What became of one webhook delivery of a control command: ``delivered`` (a 2xx),
    ``failed`` (attempt ``attempt`` failed; it is retried with backoff) or ``dead``
    (the retry bound was reached; the command went to the notifier's dead letters).

    The notifier folds these back, so its state (which command still owes which
    webhook a delivery) is a pure fold of the log and survives a restart; ``delivery_id``
    is what the receiver sees in ``X-Rollout-Delivery-Id`` to drop a repeat.
    """

    actor: Token
    target: Token
    command_id: Token
    command_kind: Token
    delivery_id: Token
    status: Literal["delivered", "failed", "dead"]
    attempt: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    detail: Text = ""


PRODUCER_TYPES: tuple[type[Event], ...] = (Decision, Outcome, Metric)
COMMAND_TYPES: tuple[type[Event], ...] = (KillSwitch, Resume, ConfigChange)
EVENT_TYPES: tuple[type[Event], ...] = (*PRODUCER_TYPES, *COMMAND_TYPES, Tick, Escalation, WouldKill, Guardrail, RecheckRequest, RecheckClosed, BanditConfig, Notification)

AnyEvent = Decision | Outcome | Metric | KillSwitch | Resume | ConfigChange | Tick | Escalation | WouldKill | Guardrail | RecheckRequest | RecheckClosed | BanditConfig | Notification
"""The tagged union: one decode call gives any of them."""

KINDS: frozenset[str] = frozenset(t.__struct_config__.tag for t in EVENT_TYPES)  # type: ignore[misc]


def kind_of(event: Event | type[Event]) -> str:
    """The wire tag of an event or event type (``"decision"``, ``"kill_switch"``...)."""
    cls = event if isinstance(event, type) else type(event)
    return cls.__struct_config__.tag  # type: ignore[return-value]

