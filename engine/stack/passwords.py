"""The roles' passwords: new random ones, their bcrypt hashes for the server, the
compose stack's environment references, and reading one back from a settings file.

``engine/stack/security.py`` puts them into the server's permission table.
"""

from __future__ import annotations

import secrets
import tomllib

__all__ = ["env_reference", "hash_password", "new_password", "read_password"]


def env_reference(role: str) -> str:
    """Name of the environment variable holding a role's password (compose): RO_<ROLE>_PASSWORD."""
    return f"RO_{role.upper()}_PASSWORD"


def new_password() -> str:
    """A fresh 192-bit password that survives NATS config variable expansion.

    nats-server parses a ``$VAR`` reference's value as a config token, so a
    ``token_urlsafe`` value that happened to start with digits and a dash ("2024-...")
    was read as a date and the server refused to start. A letter followed by hex digits
    is always a plain string.
    """
    return "r" + secrets.token_hex(24)


def hash_password(password: str, rounds: int = 10) -> str:
    """bcrypt hash as nats-server verifies it (``$2a$`` prefix, which every version accepts)."""
    import bcrypt  # the engine extra: a service with the SDK alone never hashes a password

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds, prefix=b"2a")).decode()


def read_password(raw: bytes | None) -> str | None:
    """The engine password in a role's settings file (``[engine] password``), or None
    when the file is missing, unreadable or holds a short one (then a new one is made)."""
    if raw is None:
        return None
    try:
        value = tomllib.loads(raw.decode()).get("engine", {}).get("password")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) and len(value) >= 32 else None
