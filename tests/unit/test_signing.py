"""Signed control commands: signing, key ids, subject binding, tampering, rotation (no server)."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from rollout_engine.engine.sdk.signatures import (
    KEY_HEADER,
    SIG_HEADER,
    ControlVerifier,
    KeyRing,
    key_id,
)
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.signing import CommandSigner, rotate

KILL = "ro.ctl.checkout.kill_switch"
DATA = b'{"type":"kill_switch","rollout":"checkout"}'


def _strict(*signers: CommandSigner) -> ControlVerifier:
    verifier = ControlVerifier(require_signed=True)
    for signer in signers:
        verifier.add(signer.ring)
    return verifier


def test_a_signed_command_verifies_and_its_key_id_is_the_hash_of_its_public_key() -> None:
    signer = CommandSigner.ephemeral()
    headers = signer.headers(KILL, DATA)
    raw = base64.b64decode(signer.public.public_key)
    assert headers[KEY_HEADER] == key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]
    assert _strict(signer).check(KILL, DATA, headers) is None
    assert _strict(signer).check(KILL + ".3", DATA, headers) is None, "a partitioned log's suffix is not signed"


def test_a_signature_cannot_be_moved_to_another_subject_or_payload() -> None:
    signer = CommandSigner.ephemeral()
    verifier = _strict(signer)
    headers = signer.headers(KILL, DATA)
    assert verifier.check("ro.ctl.other.kill_switch", DATA, headers) == "bad_signature"
    assert verifier.check("ro.ctl.checkout.resume", DATA, headers) == "bad_signature"
    assert verifier.check(KILL, DATA.replace(b"kill", b"kilL"), headers) == "bad_signature"
    assert verifier.check(KILL, DATA, {**headers, SIG_HEADER: "not base64!"}) == "bad_signature"


def test_unsigned_and_unknown_keys_are_refused_only_when_signatures_are_required() -> None:
    signer, forger = CommandSigner.ephemeral(), CommandSigner.ephemeral()
    forged = forger.headers(KILL, DATA)
    strict, lenient = _strict(signer), ControlVerifier(require_signed=False, ring=signer.ring)
    assert strict.check(KILL, DATA, None) == "unsigned"
    assert strict.check(KILL, DATA, forged) == "unknown_key"
    assert lenient.check(KILL, DATA, None) is None
    assert lenient.check(KILL, DATA, forged) is None
    # A known key id with a signature that does not verify is refused in both modes.
    impostor = {**forged, KEY_HEADER: signer.key_id}
    assert strict.check(KILL, DATA, impostor) == lenient.check(KILL, DATA, impostor) == "bad_signature"


def test_only_control_subjects_are_signed() -> None:
    signer = CommandSigner.ephemeral()
    assert signer.headers("ro.dlq.rollback", DATA) == {}
    assert signer.headers("ro.tick", DATA) == {}


def test_a_ring_entry_whose_id_is_not_its_key_is_ignored() -> None:
    signer, other = CommandSigner.ephemeral(), CommandSigner.ephemeral()
    lying = KeyRing([type(signer.public)(signer.key_id, other.public.public_key)], signer.key_id)
    verifier = ControlVerifier(require_signed=True, ring=lying)
    assert verifier.key_ids == frozenset()
    assert verifier.check(KILL, DATA, other.headers(KILL, DATA)) == "unknown_key"


def test_the_key_is_made_once_kept_private_and_rotation_keeps_old_keys_valid(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=str(tmp_path / "data"))
    first = CommandSigner.load(settings)
    assert CommandSigner.load(settings).key_id == first.key_id, "every engine process shares the key"
    key_file = tmp_path / "data" / "secure" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    old_headers = first.headers(KILL, DATA)

    second = rotate(settings)
    assert second.key_id != first.key_id
    ring = KeyRing.decode((tmp_path / "data" / "signing-keys.json").read_bytes())
    assert [k.id for k in ring.keys] == [first.key_id, second.key_id] and ring.current == second.key_id
    assert CommandSigner.load(settings).key_id == second.key_id
    verifier = ControlVerifier(require_signed=True, ring=ring)
    assert verifier.check(KILL, DATA, old_headers) is None, "commands signed before the rotation still verify"
    assert verifier.check(KILL, DATA, second.headers(KILL, DATA)) is None


def test_a_damaged_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    from rollout_engine.engine.stack.private_files import UnsafeSecrets

    settings = load_settings(env={}, data_dir=str(tmp_path / "data"))
    CommandSigner.load(settings)
    (tmp_path / "data" / "secure" / "signing.key").write_text("zz\n")
    with pytest.raises(UnsafeSecrets, match="rotate-signing-key"):
        CommandSigner.load(settings)


def test_an_unverified_kill_only_stops_the_candidate_and_anything_else_is_dropped() -> None:
    from rollout_engine.engine.sdk.follower import _stop_only
    from rollout_engine.events import (
        ControlState,
        KillSwitch,
        LogMessage,
        Resume,
        decode_message,
        encode,
    )

    current = ControlState(canary_pct=20, config_version=4, baseline="v1", candidate="v2")
    sneaky = ControlState(canary_pct=100, kill_switch=False, config_version=9, baseline="evil")
    kill = KillSwitch(id="k1", rollout="checkout", time_ms=1, producer="x", actor="x", reason="forged",
                      before=current, after=sneaky)
    stopped = _stop_only(LogMessage(7, KILL, encode(kill)), {"checkout": current}, "unsigned")
    assert stopped is not None and stopped.seq == 7
    [event] = decode_message(stopped.data)
    assert event.after == ControlState(canary_pct=0, kill_switch=True, config_version=4, baseline="v1", candidate="v2")
    resume = Resume(id="r1", rollout="checkout", time_ms=1, producer="x", actor="x", reason="forged",
                    before=current, after=sneaky)
    assert _stop_only(LogMessage(8, "ro.ctl.checkout.resume", encode(resume)), {"checkout": current}, "unsigned") is None
