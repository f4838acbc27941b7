"""The wire contract of rollout-engine: event Structs, codec, subject map, errors.

Import from here::

    from rollout_engine.events import Decision, Outcome, Metric, encode_batch, decode_message, subjects

``subjects`` is the one subject map (subjects, KV keys, filters); ``transitions`` the
control vocabulary (kill, resume, configure, with the one ``config_version`` rule);
:class:`LogMessage` the one record of a log message.
"""

from __future__ import annotations

from rollout_engine.events import subjects, transitions
from rollout_engine.events.codec import (
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    Rejected,
    decode,
    decode_from_log,
    decode_json,
    decode_lenient,
    decode_message,
    encode,
    encode_batch,
    encode_json,
    validate,
)
from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import check_token, command_id, is_token, new_event_id
from rollout_engine.events.message import LogMessage, log_messages
from rollout_engine.events.schema import (
    COMMAND_TYPES,
    ENGINE_ROLLOUT,
    EVENT_TYPES,
    PRODUCER_TYPES,
    SCHEMA_VERSION,
    AnyEvent,
    BanditConfig,
    Breach,
    ConfigChange,
    ControlState,
    Decision,
    Escalation,
    Event,
    Evidence,
    Guardrail,
    GuardrailState,
    KillEvidence,
    KillSwitch,
    Metric,
    Notification,
    Outcome,
    RecheckClosed,
    RecheckRequest,
    Resume,
    ShadowResult,
    Tick,
    WouldKill,
    kind_of,
)

__all__ = [
    "COMMAND_TYPES",
    "ENGINE_ROLLOUT",
    "EVENT_TYPES",
    "MAX_BATCH",
    "MAX_MESSAGE_BYTES",
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
    "EventError",
    "Evidence",
    "Guardrail",
    "GuardrailState",
    "KillEvidence",
    "KillSwitch",
    "LogMessage",
    "Metric",
    "Notification",
    "Outcome",
    "RecheckClosed",
    "RecheckRequest",
    "Rejected",
    "Resume",
    "ShadowResult",
    "Tick",
    "WouldKill",
    "check_token",
    "command_id",
    "decode",
    "decode_from_log",
    "decode_json",
    "decode_lenient",
    "decode_message",
    "encode",
    "encode_batch",
    "encode_json",
    "is_token",
    "kind_of",
    "log_messages",
    "new_event_id",
    "subjects",
    "transitions",
    "validate",
]
