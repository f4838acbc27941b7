"""The operator API's request validation: every field checked before anything is published.

A refused request raises :class:`ApiError` with an HTTP-like code and a message that
says what was wrong and what to do; nothing reaches the log.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from rollout_engine.consumers.rollback.policy import load_policy, policy_document
from rollout_engine.events import transitions
from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import is_token, new_event_id

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_REASON",
    "ApiError",
    "actor_of",
    "now_ms",
    "page_of",
    "parse_body",
    "pct_of",
    "policy_of",
    "reason_of",
    "request_id_of",
    "rollout_of",
]

MAX_REASON = 1000
"""Reasons are event Text (at most 1024 characters); room is left for the "manual: " prefix."""
MAX_BODY_BYTES = 1024 * 1024
"""Largest request body (a policy document is a few KB): bigger ones get a 413."""
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays in a request (a policy needs 4): deeper ones get a 400."""


class ApiError(Exception):
    """A refused request: HTTP-like ``code`` (400 bad input, 404 unknown rollout, 409
    conflict with the current state, 413 too large, 503 not available) and a message
    saying what was wrong and what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_ms() -> int:
    """The time a command made by the API is stamped with (ms since the epoch)."""
    return time.time_ns() // 1_000_000


def parse_body(request_data: bytes) -> dict[str, Any]:
    """The request as a JSON object (an empty request is ``{}``), or a 4xx saying why not
    (whatever its size or depth)."""
    if len(request_data) > MAX_BODY_BYTES:
        raise ApiError(413, f"request is {len(request_data)} bytes; at most {MAX_BODY_BYTES} are accepted")
    if not request_data.strip():
        return {}
    try:
        body = msgspec.json.decode(request_data)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise ApiError(400, f"request nests objects or arrays deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request must be a JSON object, e.g. {\"rollout\": \"checkout-v2\"}")
    _check_depth(body)
    return body


def _check_depth(body: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request nests objects or arrays deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, dict | list))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))


def rollout_of(body: dict[str, Any]) -> str:
    rollout = body.get("rollout")
    if not is_token(rollout) or str(rollout).startswith("_"):
        raise ApiError(400, f"rollout: expected 1-64 of A-Z a-z 0-9 _ - (not starting with '_'), got {rollout!r}")
    return str(rollout)


def actor_of(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    if actor in (None, ""):
        raise ApiError(400, "actor: a change needs an operator identity (who is making it); "
                            "pass --actor or set ROLLOUT_ACTOR")
    if not is_token(actor):
        raise ApiError(400, f"actor: expected 1-64 of A-Z a-z 0-9 _ -, got {actor!r}")
    return str(actor)


def reason_of(body: dict[str, Any], required: bool) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise ApiError(400, f"reason: expected text, got {type(reason).__name__}")
    if required and not reason.strip():
        raise ApiError(400, "reason: say why (it is recorded in the audit trail)")
    if len(reason) > MAX_REASON or any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in reason):
        raise ApiError(400, f"reason: at most {MAX_REASON} characters, no control characters")
    return reason


def pct_of(value: Any, field: str = "canary_pct") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{field}: expected a number 0-100, got {value!r}")
    pct = float(value)
    if not 0.0 <= pct <= 100.0:
        raise ApiError(400, f"{field}: {value} is out of range; expected 0-100 (percent of traffic)")
    return pct


def request_id_of(body: dict[str, Any]) -> str:
    """The client's ``request_id`` (a retried request is stored once), or a new id."""
    rid = body.get("request_id")
    if rid is None:
        return new_event_id()
    if not is_token(rid):
        raise ApiError(400, f"request_id: expected 1-64 of A-Z a-z 0-9 _ -, got {rid!r}")
    return str(rid)


def policy_of(body: dict[str, Any], version: int) -> dict[str, Any] | None:
    """The ``policy`` document, validated as the rollback consumer will read it (or None)."""
    policy = body.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ApiError(400, "policy: expected a policy document (the TOML tables as a JSON object)")
    try:
        loaded = load_policy(policy, version=version)
    except EventError as exc:
        raise ApiError(400, f"policy: {exc}") from None
    # a preset is expanded here, so the log records every number, not a name whose
    # meaning a later release could change
    return policy_document(loaded) if "preset" in policy else policy


def page_of(body: dict[str, Any], default_limit: int, max_limit: int) -> tuple[int, str | None, str | None, str]:
    """A listing's ``(limit, cursor, phase, prefix)``; each refusal names the request field
    and the ``rollout status`` flag that sets it, so a script and a person both know what to fix."""
    unknown = set(body) - {"limit", "cursor", "state", "prefix"}
    if unknown:
        raise ApiError(400, f"unknown field(s) {sorted(unknown)}; a status listing takes limit, cursor, state, "
                            "prefix (or give rollout for one rollout)")
    limit = body.get("limit", default_limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        raise ApiError(400, f"limit (--limit): expected a whole number from 1 to {max_limit} (rollouts per page), "
                            f"got {limit!r}")
    cursor = body.get("cursor")
    if cursor is not None and not is_token(cursor):
        raise ApiError(400, f"cursor (--cursor): {cursor!r} is not a cursor a status page returned; pass the "
                            "previous page's next_cursor unchanged, or leave it out for the first page")
    state = body.get("state")
    if state is not None:
        phase = transitions.PHASE_ALIASES.get(state, state) if isinstance(state, str) else state
        if phase not in transitions.PHASES:
            words = ", ".join([*transitions.PHASES, *transitions.PHASE_ALIASES])
            raise ApiError(400, f"state (--state): expected one of {words}, got {state!r}")
        state = phase
    prefix = body.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not is_token(prefix)):
        raise ApiError(400, f"prefix (--prefix): expected the start of a rollout name (1-64 of A-Z a-z 0-9 _ -), "
                            f"got {prefix!r}")
    return limit, cursor, state, prefix
