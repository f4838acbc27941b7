"""The engine's signing key: every control command it publishes is signed (Ed25519).

What is signed and how a service checks it: ``engine/sdk/signatures.py``. Here: the
private key, the ring of public keys, and publishing the ring.

Files, beside the message-id key in ``DATA_DIR/secure`` (a :class:`PrivateDir`: 0700,
owned by the engine's user, no symlink followed)::

    secure/signing.key          hex of the current 32-byte Ed25519 private seed (0600)
    secure/signing-keys.json    the public key ring (the trusted copy)
    signing-keys.json           the same ring in DATA_DIR, for services and auditors

The first engine process that needs the key makes it (``PrivateDir.create`` links
atomically, so two processes starting at once share the first one). ``rollout up``,
``rollout api`` and every consumer (at each connect, before it relays anything) add
their ring to KV ``ro_state`` under ``engine.signing_keys``, where every role that
follows control may read it.

Rotation (``rollout secure rotate-signing-key``): a new private key replaces the old
one and its public key is appended to the ring; retired public keys stay, so commands
signed before the rotation (the last command of each subject is what a new service
instance reads) still verify. Restart the engine's processes afterwards.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from rollout_engine.engine.sdk.signatures import (
    KEY_HEADER,
    KV_KEY,
    PUBLIC_FILE,
    SIG_HEADER,
    KeyRing,
    PublicKey,
    key_id,
    signed_bytes,
)
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.private_files import PrivateDir, UnsafeSecrets, write_private
from rollout_engine.events import subjects

__all__ = ["KEY_FILE", "CommandSigner", "publish_keys", "rotate"]

log = logging.getLogger(__name__)

KEY_FILE = "signing.key"
_CONTROL_PREFIX = subjects.CONTROL_ALL[:-1]  # "ro.ctl."


class CommandSigner:
    """Signs what the engine publishes on ``ro.ctl.*.*``; anything else gets no signature."""

    def __init__(self, private: Ed25519PrivateKey, ring: KeyRing | None = None) -> None:
        self._private = private
        self.public = public_entry(private)
        self.key_id = self.public.id
        self.ring = ring if ring is not None else KeyRing([self.public], self.key_id)

    def sign(self, subject: str, data: bytes) -> str:
        """The base64 signature of ``data`` on ``subject``."""
        return base64.b64encode(self._private.sign(signed_bytes(subject, data))).decode()

    def headers(self, subject: str, data: bytes) -> dict[str, str]:
        """The signature headers of a message (none for a subject outside ``ro.ctl.``)."""
        if not subject.startswith(_CONTROL_PREFIX):
            return {}
        return {KEY_HEADER: self.key_id, SIG_HEADER: self.sign(subject, data)}

    @classmethod
    def ephemeral(cls) -> CommandSigner:
        """A key of this process only (tests, tools): its ring must be handed to verifiers by hand."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, settings: Settings) -> CommandSigner:
        """The deployment's key from ``DATA_DIR/secure`` (made on first use), its ring kept up to date."""
        with PrivateDir(settings.data_path / "secure") as directory:
            directory.create(KEY_FILE, secrets.token_hex(32) + "\n")
            private = _decode(directory.read(KEY_FILE) or b"", str(settings.data_path / "secure" / KEY_FILE))
            ring = _read_ring(directory)
            signer = cls(private, ring)
            if signer.key_id not in {k.id for k in ring.keys} or ring.current != signer.key_id:
                ring.keys = [k for k in ring.keys if k.id != signer.key_id] + [signer.public]
                ring.current = signer.key_id
                directory.write(PUBLIC_FILE, ring.encode() + b"\n")
        if not (settings.data_path / PUBLIC_FILE).exists() or ring.current != _public_file_current(settings):
            write_private(settings.data_path / PUBLIC_FILE, ring.encode() + b"\n")
        return signer


def rotate(settings: Settings) -> CommandSigner:
    """Make a new signing key, keep the old public keys in the ring; returns the new signer."""
    with PrivateDir(settings.data_path / "secure") as directory:
        directory.write(KEY_FILE, secrets.token_hex(32) + "\n")
    return CommandSigner.load(settings)


async def publish_keys(js: Any, ring: KeyRing, *, replace: bool = False) -> bool:
    """Add the ring's keys to the one in KV ``ro_state`` (``engine.signing_keys``), where services read it.

    Keys are added, not replaced (``replace``: the ring becomes exactly ``ring``): engine
    processes that do not share a data directory (compose gives each consumer its own
    volume) each add their own key, with a compare-and-set so none is lost. A failure is
    logged, not raised: the engine still runs, and services that require signatures
    refuse its commands (each refusal logged and counted) until the key is there.
    """
    try:
        kv = await js.key_value(subjects.STATE_BUCKET)
        for _attempt in range(10):
            try:
                entry = await kv.get(KV_KEY)
                held, revision = KeyRing.decode(entry.value or b"{}"), entry.revision
            except KeyNotFoundError:
                held, revision = KeyRing(), None
            known = {k.id for k in held.keys}
            merged = ring if replace else KeyRing([*held.keys, *(k for k in ring.keys if k.id not in known)],
                                                  ring.current)
            if merged == held:
                return True
            try:
                if revision is None:
                    await kv.create(KV_KEY, merged.encode())
                else:
                    await kv.update(KV_KEY, merged.encode(), last=revision)
                return True
            except KeyWrongLastSequenceError:
                continue  # another engine process added its key meanwhile: merge again
        raise RuntimeError("the ring kept changing under 10 attempts")
    except Exception as exc:
        log.error("could not publish the signing key ring to KV %s %s (%s): services that require signed "
                  "control commands will refuse the engine's until it is there", subjects.STATE_BUCKET, KV_KEY, exc)
        return False


def public_entry(private: Ed25519PrivateKey) -> PublicKey:
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PublicKey(key_id(raw), base64.b64encode(raw).decode(), time.time_ns() // 1_000_000)


def _read_ring(directory: PrivateDir) -> KeyRing:
    raw = directory.read(PUBLIC_FILE)
    if not raw:
        return KeyRing()
    try:
        return KeyRing.decode(raw)
    except Exception:
        raise UnsafeSecrets(f"the signing key ring {directory.path / PUBLIC_FILE} is not valid JSON; restore it "
                            "from DATA_DIR/signing-keys.json or delete it (older commands then no longer verify)") from None


def _public_file_current(settings: Settings) -> str:
    try:
        return KeyRing.decode((settings.data_path / PUBLIC_FILE).read_bytes()).current
    except Exception:
        return ""


def _decode(raw: bytes, where: str) -> Ed25519PrivateKey:
    try:
        seed = bytes.fromhex(raw.decode().strip())
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise UnsafeSecrets(f"signing key {where} is not 32 bytes of hex; rotate it with "
                            "`rollout secure rotate-signing-key`")
    return Ed25519PrivateKey.from_private_bytes(seed)
