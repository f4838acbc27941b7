"""``Nats-Msg-Id`` of the engine's own messages: a keyed MAC no producer can predict.

JetStream de-duplicates by ``Nats-Msg-Id`` over the whole stream, whoever published.
Producers may publish into ``RO_LOG`` (``ro.evt.>``), so an engine message id a
producer can compute is an id it can burn first: publish anything under it and the
engine's kill switch, resume, config change or tick is acknowledged as a duplicate and
never stored. The ids in the bodies stay deterministic (``command_id("kill", rollout,
cause)``, ``tick-<time>``): replay, audit and the consumers' own de-duplication need
no secret. Only the *header* is keyed::

    Nats-Msg-Id = "ro1-" + hex(blake2b(body id [+ "\\x1f" + salt], key=<engine key>, 16 bytes))

The key is 32 random bytes in ``DATA_DIR/secure/msgid.key`` (mode 0600 in a 0700
directory checked by :class:`~rollout_engine.engine.stack.private_files.PrivateDir`), made by the
first engine process that needs it, or the file named by the ``msg_id_key_file``
setting. Every process that publishes the same command (two tick publishers, API
instances, a consumer restarted or moved to another host) must share the key, or
they stop de-duplicating each other; a producer never sees it. The salt is 0 except
when the relay re-sends a command whose id was found taken (see ``consumers/relay.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.private_files import PrivateDir, UnsafeSecrets, read_private_file

__all__ = ["KEY_FILE", "EngineIds", "key_path"]

KEY_FILE = "msgid.key"
KEY_BYTES = 32
PREFIX = "ro1-"


class EngineIds:
    """Computes the ``Nats-Msg-Id`` of engine messages from their deterministic ids."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"the message-id key must have at least 16 bytes, got {len(key)}")
        self._key = key[:64]

    def of(self, body_id: str, salt: int = 0) -> str:
        """The header id of the message whose body id is ``body_id`` (``salt`` > 0: a re-send under a new id)."""
        text = body_id if salt == 0 else f"{body_id}\x1f{salt}"
        return PREFIX + hashlib.blake2b(text.encode(), key=self._key, digest_size=16).hexdigest()

    def headers(self, body_id: str, **extra: str) -> dict[str, str]:
        """Publish headers: ``Nats-Msg-Id`` and any ``extra`` ones."""
        return {**extra, "Nats-Msg-Id": self.of(body_id)}

    @classmethod
    def ephemeral(cls) -> EngineIds:
        """A key for this process only (tests, one-off tools): ids still unpredictable, not shared."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load(cls, settings: Settings) -> EngineIds:
        """The deployment's key: ``msg_id_key_file`` if set (must exist), else ``DATA_DIR/secure/msgid.key``
        (created on first use)."""
        if settings.msg_id_key_file:
            try:
                return cls(_decode(read_private_file(Path(settings.msg_id_key_file)), settings.msg_id_key_file))
            except UnsafeSecrets as exc:
                raise UnsafeSecrets(f"{exc} (the msg_id_key_file setting)") from None
        with PrivateDir(settings.data_path / "secure") as directory:
            directory.create(KEY_FILE, secrets.token_hex(KEY_BYTES) + "\n")
            raw = directory.read(KEY_FILE) or b""
        return cls(_decode(raw, str(key_path(settings))))


def key_path(settings: Settings) -> Path:
    """Where the key of ``settings`` lives."""
    return Path(settings.msg_id_key_file) if settings.msg_id_key_file else settings.data_path / "secure" / KEY_FILE


def _decode(raw: bytes, where: str) -> bytes:
    try:
        key = bytes.fromhex(raw.decode().strip())
    except ValueError:
        raise UnsafeSecrets(f"message-id key {where} is not hex text; delete it to make a new one "
                            "(every engine process must then restart with the new key)") from None
    if len(key) < 16:
        raise UnsafeSecrets(f"message-id key {where} holds {len(key)} bytes; at least 16 are needed")
    return key
