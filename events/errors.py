"""The one error type the contract raises for bad input.

Producers get it from the SDK before anything is sent; consumers attach its text to
the dead letter. It always names the field and the rule broken, so the fix is obvious.
"""

from __future__ import annotations

import re

__all__ = ["EventError"]

_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


class EventError(ValueError):
    """An event (or a batch, or a subject token) broke the contract.

    Attributes:
        field: JSON path of the offending field (``$.rollout``, ``$[3].value``) or a
            short name such as ``payload`` when the whole message is at fault.
        rule: what was expected, in words (``finite number <= 1e12``).
    """

    def __init__(self, field: str, rule: str, hint: str = "") -> None:
        self.field = field
        self.rule = rule
        self.hint = hint
        message = f"invalid event: {field}: {rule}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    @classmethod
    def from_msgspec(cls, exc: Exception, hint: str = "") -> EventError:
        """Translate a msgspec error ("Expected `int` <= 1 - at `$.v`") into field + rule.

        A missing field is named by its own path (``$.variant``, ``$.after.kill_switch``),
        not by the object that lacks it (msgspec says "at `$.after`", or nothing at the
        top level).
        """
        text = str(exc)
        match = _PATH.search(text)
        rule = text[: match.start()] if match else text
        missing = _MISSING.match(rule)
        if missing:
            where = match.group("path") if match else "$"
            return cls(f"{where}.{missing.group('name')}", "required field is missing", hint)
        if match:
            return cls(match.group("path"), rule, hint)
        return cls("payload", text, hint)
