"""Secrets on disk: a directory someone else prepared, or a symlink planted in it, is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.private_files import (
    PrivateDir,
    UnsafeSecrets,
    read_private_file,
    write_private,
)
from rollout_engine.engine.stack.security import write_secure_dir


def test_a_new_secrets_directory_is_private_and_its_files_too(tmp_path: Path) -> None:
    files = write_secure_dir(tmp_path / "secure", tmp_path)
    assert stat.S_IMODE((tmp_path / "secure").stat().st_mode) == 0o700
    for path in (tmp_path / "secure").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (tmp_path / "secure" / "engine.password").read_text().strip() == files.passwords["engine"]


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777])
def test_a_directory_open_to_group_or_world_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "secure"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(UnsafeSecrets, match=rf"mode {mode:04o}.*chmod 700"):
        write_secure_dir(directory, tmp_path)
    assert list(directory.iterdir()) == [], "nothing was written into it"


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory to another user")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "secure"
    directory.mkdir(mode=0o700)
    os.chown(directory, 4242, 4242)
    with pytest.raises(UnsafeSecrets, match="belongs to uid 4242"):
        write_secure_dir(directory, tmp_path)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    (tmp_path / "secure").symlink_to(theirs)
    with pytest.raises(UnsafeSecrets, match="not a symlink"):
        write_secure_dir(tmp_path / "secure", tmp_path)
    assert list(theirs.iterdir()) == []


def test_a_symlink_planted_inside_is_refused_or_replaced_never_followed(tmp_path: Path) -> None:
    directory = tmp_path / "secure"
    with PrivateDir(directory):
        pass
    bait = tmp_path / "bait.txt"
    bait.write_text("theirs")
    (directory / "operator.toml").symlink_to(bait)
    with pytest.raises(UnsafeSecrets, match="symlink"):  # a password is read back first: refused
        write_secure_dir(directory, tmp_path)
    with PrivateDir(directory) as private:
        private.write("operator.toml", "mine")  # a write replaces the link itself
    assert bait.read_text() == "theirs"
    assert not (directory / "operator.toml").is_symlink()
    assert stat.S_IMODE((directory / "operator.toml").stat().st_mode) == 0o600


def test_create_keeps_the_first_secret_and_write_private_replaces_a_link(tmp_path: Path) -> None:
    with PrivateDir(tmp_path / "secure") as private:
        assert private.create("k", "first") is True
        assert private.create("k", "second") is False
        assert private.read("k") == b"first"
        assert private.read("absent") is None
    bait = tmp_path / "bait"
    bait.write_text("theirs")
    (tmp_path / ".env").symlink_to(bait)
    write_private(tmp_path / ".env", "A=1\n")
    assert bait.read_text() == "theirs" and (tmp_path / ".env").read_text() == "A=1\n"


def test_password_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("secret\n")
    path.chmod(0o644)
    with pytest.raises(UnsafeSecrets, match="mode 0644"):
        read_private_file(path)
    path.chmod(0o600)
    assert read_private_file(path) == b"secret\n"
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(UnsafeSecrets, match="symlink"):
        read_private_file(tmp_path / "link")


def test_engine_message_ids_are_keyed_stable_and_unpredictable(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=str(tmp_path / "data"))
    ids = EngineIds.load(settings)
    again = EngineIds.load(settings)  # a second process of the deployment: the same key
    key = tmp_path / "data" / "secure" / "msgid.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    body_id = "kill-0123456789abcdef01234567"
    assert ids.of(body_id) == again.of(body_id) != body_id
    assert ids.of(body_id).startswith("ro1-") and body_id not in ids.of(body_id)
    assert ids.of(body_id, salt=1) != ids.of(body_id)
    assert EngineIds.ephemeral().of(body_id) != ids.of(body_id), "without the key the id cannot be computed"
    shared = load_settings(env={}, data_dir=str(tmp_path / "other"), msg_id_key_file=str(key))
    assert EngineIds.load(shared).of(body_id) == ids.of(body_id)
