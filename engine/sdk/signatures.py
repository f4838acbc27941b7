"""Signed control commands: what a signature covers, the public key ring, verification.

The engine signs every message it publishes on ``ro.ctl.<rollout>.<command>`` with an
Ed25519 key (``engine/stack/signing.py``) and puts the signature in two headers::

    Ro-Sig-Key: <key id>      first 16 hex digits of sha256(raw 32-byte public key)
    Ro-Sig:     <base64 of the 64-byte signature over signed_bytes(subject, data)>

The signature covers the exact payload bytes *and* the subject (without the partition
number a partitioned log appends), so a kill signed for one rollout cannot be replayed
onto another rollout's subject, nor a resume onto a kill switch subject.

Public keys travel as a :class:`KeyRing` (JSON): in KV ``ro_state`` under
``engine.signing_keys`` (readable by every role that follows control) and in the file
``DATA_DIR/signing-keys.json``. Keys retired by a rotation stay in the ring, so a
command signed before the rotation still verifies.

Verification (:class:`ControlVerifier`) returns ``None`` for a command to apply, or the
reason it is refused: ``unsigned``, ``unknown_key``, ``bad_signature``. With
``require_signed`` (the default in secure mode) all three are refused; without it,
only a signature by a *known* key that does not verify is refused (outside secure mode
anyone may publish control commands, so an unsigned one proves nothing either way).
What the SDK does with a refused message (never applied as sent; a refused kill switch
still stops the candidate) is the follower's: ``engine/sdk/follower.py``.

``cryptography`` is imported only when a signature is checked: the slim SDK install
works without it unless signatures are required.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from rollout_engine.events import subjects

__all__ = [
    "KEY_HEADER",
    "KV_KEY",
    "PUBLIC_FILE",
    "REFUSALS",
    "SIG_HEADER",
    "ControlVerifier",
    "KeyRing",
    "PublicKey",
    "key_id",
    "signed_bytes",
]

log = logging.getLogger(__name__)

KEY_HEADER = "Ro-Sig-Key"
SIG_HEADER = "Ro-Sig"
KV_KEY = subjects.engine_key("signing_keys")
"""Where the engine publishes its :class:`KeyRing` in KV ``ro_state``."""
PUBLIC_FILE = "signing-keys.json"
"""The ring's file name in DATA_DIR (and in the secure directory)."""
REFUSALS: tuple[str, ...] = ("unsigned", "unknown_key", "bad_signature")
_DOMAIN = b"ro-sig-v1\n"


class PublicKey(msgspec.Struct, frozen=True):
    """One engine signing key: its id, the raw public key (base64) and when it was made."""

    id: str
    public_key: str
    created_ms: int = 0


class KeyRing(msgspec.Struct):
    """Every public key commands may be signed with; ``current`` signs new commands."""

    keys: list[PublicKey] = msgspec.field(default_factory=list)
    current: str = ""

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> KeyRing:
        return msgspec.json.decode(data, type=cls)


def key_id(public_raw: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: 16 hex digits of its sha256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def signed_bytes(subject: str, data: bytes) -> bytes:
    """What a signature covers: a domain tag, the subject (partition number dropped), the payload.

    Raises ValueError for a subject outside the subject map.
    """
    parsed = subjects.parse(subject)
    canonical = ".".join(p for p in (subjects.ROOT, parsed.family, parsed.rollout, parsed.kind) if p)
    return _DOMAIN + canonical.encode() + b"\n" + data


def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey


class ControlVerifier:
    """Checks the signature of control messages against a key ring (see the module docstring)."""

    def __init__(self, *, require_signed: bool, ring: KeyRing | None = None) -> None:
        self.require_signed = require_signed
        self._keys: dict[str, Any] = {}
        self._warned = False
        if require_signed:
            try:
                _ed25519()
            except ImportError:
                raise RuntimeError("require_signed needs the 'cryptography' package (pip install "
                                   "'rollout-engine[engine]' or cryptography) to verify control commands") from None
        if ring is not None:
            self.add(ring)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def add(self, ring: KeyRing) -> None:
        """Trust every key of ``ring`` (keys already known stay)."""
        try:
            public_key = _ed25519()
        except ImportError:
            if not self._warned:
                log.warning("rollout SDK: 'cryptography' is not installed; signed control commands are applied "
                            "unverified (install it, or require_signed=True to refuse them)")
                self._warned = True
            return
        for entry in ring.keys:
            try:
                raw = base64.b64decode(entry.public_key, validate=True)
                if key_id(raw) != entry.id:
                    raise ValueError(f"id {entry.id} is not the id of its key ({key_id(raw)})")
                self._keys[entry.id] = public_key.from_public_bytes(raw)
            except (ValueError, binascii.Error) as exc:
                log.error("rollout SDK: ignoring a malformed public key in the signing key ring: %s", exc)

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    def check(self, subject: str, data: bytes, headers: Mapping[str, str] | None) -> str | None:
        """None if the message may be applied, else why it is refused (one of :data:`REFUSALS`)."""
        headers = headers or {}
        kid, signature = headers.get(KEY_HEADER), headers.get(SIG_HEADER)
        if not kid or not signature:
            return "unsigned" if self.require_signed else None
        key = self._keys.get(kid)
        if key is None:
            return "unknown_key" if self.require_signed else None
        try:
            key.verify(base64.b64decode(signature, validate=True), signed_bytes(subject, data))
        except Exception:  # InvalidSignature, bad base64, a subject outside the map
            return "bad_signature"
        return None
