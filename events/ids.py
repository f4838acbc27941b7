"""Identifiers: unique time-sortable event ids, deterministic command ids, token checks.

Event ids are 28 lowercase hex characters: 12 of milliseconds since the epoch, 8 of a
per-process random nonce and 8 of a per-process counter. They sort by time as plain
strings, cost one f-string to make (a ULID's base32 costs several times more on the
hot path of ``assign()``) and are subject-safe tokens.

Command ids are derived from what caused them (``command_id("kill", rollout, cause)``),
so the same log always yields the same ids and JetStream's ``Nats-Msg-Id`` de-duplicates
a command that a restarted consumer emits twice.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time

from rollout_engine.events.errors import EventError

__all__ = [
    "TOKEN_MAX",
    "TOKEN_PATTERN",
    "check_token",
    "command_id",
    "is_token",
    "new_event_id",
]

TOKEN_MAX = 64
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$(?!\n)"
"""Ids that may become subject tokens: no ``.``, ``*``, ``>``, whitespace or control bytes.

``(?!\n)`` because Python's ``$`` also matches before a trailing newline."""

_TOKEN = re.compile(TOKEN_PATTERN)
_NONCE = os.urandom(4).hex()
_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_event_id(time_ms: int | None = None) -> str:
    """Return a new unique id that sorts after every id made earlier in this process."""
    if time_ms is None:
        time_ms = time.time_ns() // 1_000_000
    return f"{time_ms:012x}{_NONCE}{next(_COUNTER) & 0xFFFFFFFF:08x}"


def command_id(action: str, *parts: str | int) -> str:
    """A deterministic id for a command, from its action and what caused it.

    >>> command_id("kill", "checkout-v2", 41) == command_id("kill", "checkout-v2", 41)
    True
    """
    digest = hashlib.blake2b("\x1f".join(map(str, (action, *parts))).encode(), digest_size=12)
    return f"{action[:16]}-{digest.hexdigest()}"


def is_token(value: object) -> bool:
    """True when ``value`` is safe to use as one subject token."""
    return isinstance(value, str) and _TOKEN.match(value) is not None


def check_token(value: object, field: str) -> str:
    """Return ``value`` if it is a safe subject token, else raise :class:`EventError`."""
    if not is_token(value):
        raise EventError(
            field,
            f"expected 1-{TOKEN_MAX} characters of A-Z a-z 0-9 _ -, got {value!r}",
            "ids become NATS subject tokens; '.', '*', '>' and spaces would widen a subscription",
        )
    return value  # type: ignore[return-value]
