"""The constrained field types of the wire contract: the rules a decoder enforces.

Limits (text length, dimensions, breaches, float bound) and the annotated types the
event Structs of ``events.schema`` are declared with; a JSON schema shows each one's
description.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from rollout_engine.events.ids import TOKEN_PATTERN

__all__ = [
    "FLOAT_BOUND", "MAX_BREACHES", "MAX_DIMENSIONS", "MAX_TEXT", "SCHEMA_VERSION", "Count", "DecisionReason",
    "Finite", "Id", "OperatorAction", "Pct", "Prob", "Text", "TimeMs", "Token", "UnitId", "Verdict", "Version",
]

SCHEMA_VERSION = 1
"""The newest schema version this code reads and writes."""

MAX_TEXT = 1024
MAX_DIMENSIONS = 32
MAX_BREACHES = 32
FLOAT_BOUND = 1e12

Token = Annotated[str, Meta(pattern=TOKEN_PATTERN, description="subject-safe id: 1-64 of A-Z a-z 0-9 _ -")]
Id = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        extra_json_schema={"pattern": TOKEN_PATTERN},
        description="subject-safe id: 1-64 of A-Z a-z 0-9 _ -",
    ),
]
"""A token on the hot path of producer events. Same rule as :data:`Token`: msgspec checks the
length here, ``events.checks`` the characters, for a whole message in one C pass instead of
one regex call per field (msgspec's per-field pattern check cost 75% of decoding; the
batch check relies on the 1-64 bounds above, ``TOKEN_MAX``). Never decode these Structs
without going through ``events.codec`` or :func:`events.codec.validate`."""
UnitId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f]+$(?!\n)",
        description="stickiness key (user, session, request): 1-256 printable characters",
    ),
]
Text = Annotated[
    str,
    Meta(max_length=MAX_TEXT, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$(?!\n)", description="free text, no control characters"),
]
TimeMs = Annotated[int, Meta(ge=0, le=2**53, description="event time, ms since the Unix epoch")]
Finite = Annotated[float, Meta(ge=-FLOAT_BOUND, le=FLOAT_BOUND, description="finite number, |x| <= 1e12")]
Pct = Annotated[float, Meta(ge=0.0, le=100.0, description="percentage, 0-100")]
Prob = Annotated[float, Meta(ge=0.0, le=1.0, description="probability, 0-1")]
Count = Annotated[int, Meta(ge=0, le=2**53)]
Version = Annotated[int, Meta(ge=1, le=SCHEMA_VERSION, description="schema version")]

Verdict = Literal["win", "loss", "neutral", "inconclusive"]
OperatorAction = Annotated[
    str,
    Meta(pattern=TOKEN_PATTERN, description="the operator verb that made a control command: abort, retry, resume, "
         "promote, promote_full, pause, unpause, set (absent: the engine's own command). A token, not a closed "
         "set, so a verb added later never makes an older service refuse a control command"),
]
DecisionReason = Literal[
    "default", "canary", "kill_switch", "bandit", "forced_safe", "override", "disabled"
]
