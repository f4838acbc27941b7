"""Generated credentials."""

from __future__ import annotations


def test_generated_passwords_are_plain_strings_for_nats_variable_expansion() -> None:
    import re

    from rollout_engine.engine.stack.security import new_password

    passwords = {new_password() for _ in range(200)}
    assert len(passwords) == 200
    assert all(re.fullmatch(r"r[0-9a-f]{48}", p) for p in passwords)  # never read as a number or a date
