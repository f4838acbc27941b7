"""The one error type the contract raises for bad input.

Producers get it from the SDK before anything is sent; consumers attach its text to
the dead letter. It always names the field and the rule broken, so the fix is obvious.
"""

from __future__ import annotations

import re

__all__ = ["EventError"]

_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")


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
        """Translate a msgspec error ("Expected `int` <= 1 - at `$.v`") into field + rule."""
        text = str(exc)
        match = _PATH.search(text)
        if match:
            return cls(match.group("path"), text[: match.start()], hint)
        return cls("payload", text, hint)
