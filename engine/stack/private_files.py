"""Secrets on disk that no other local user can read, replace or redirect.

The credentials of ``rollout up --secure`` (one password per role, the server's auth
include, the TLS key, the key of the engine's message ids) live in one directory. Three
local attacks are closed here:

* **a directory prepared by someone else**: another user who can write the data
  directory first creates ``secure/`` (or a symlink of that name) and reads every
  password written into it. :class:`PrivateDir` refuses a directory that is a symlink,
  is not owned by the running user, or grants any group or world access, and says how
  to fix it;
* **a planted symlink inside it** (``secure/engine.toml -> /tmp/theirs``): files are
  created under a fresh name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed over the
  target (a rename replaces a symlink, it never follows it), and read with
  ``O_NOFOLLOW``;
* **a swap between check and use**: the directory is opened once (``O_DIRECTORY |
  O_NOFOLLOW``), checked through that descriptor, and every file operation is relative
  to it (``dir_fd``), so renaming the path afterwards changes nothing.

Example::

    with PrivateDir(Path("data/secure")) as secrets:
        secrets.write("engine.password", "r0123...")
        assert secrets.read("engine.password") == b"r0123..."
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["PrivateDir", "UnsafeSecrets", "read_private_file", "write_private"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeSecrets(RuntimeError):
    """A secrets directory or file another local user could read or have prepared."""


def _check(st: os.stat_result, path: Path, what: str, *, directory: bool) -> None:
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    if not kind(st.st_mode):
        raise UnsafeSecrets(f"{what} {path} is not a {'directory' if directory else 'regular file'}; "
                            "remove it and run the command again to create it")
    if st.st_uid != os.getuid():
        raise UnsafeSecrets(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}): someone else "
            "may have prepared it to read the secrets written there. Remove it (and check who created it), "
            "then run the command again")
    if st.st_mode & 0o077:
        raise UnsafeSecrets(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or other users can reach it. "
            f"If you trust its content, `chmod {'700' if directory else '600'} {path}`; otherwise delete it "
            "to rotate every secret")


class PrivateDir:
    """A directory of secrets, opened once and checked (owner, mode, no symlink).

    ``create`` makes it (mode 0700, parents as needed) when it does not exist.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if create and not os.path.lexists(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # a concurrent creator: checked below like any other
                os.mkdir(self.path, 0o700)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
            raise UnsafeSecrets(f"secrets directory {self.path} cannot be opened as a plain directory ({exc.strerror}); "
                                "it must be a real directory, not a symlink: remove it and run the command again") from None
        try:
            _check(os.fstat(self.fd), self.path, "secrets directory", directory=True)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subdir(self, name: str, *, create: bool = True) -> PrivateDir:
        """A private directory inside this one (e.g. ``tls``)."""
        _plain(name)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=self.fd)
        return PrivateDir(self.path / name, create=False)

    def write(self, name: str, content: str | bytes) -> Path:
        """Replace ``name`` atomically with ``content``, mode 0600 from the first byte."""
        _write_at(self.fd, name, content)
        return self.path / name

    def create(self, name: str, content: str | bytes) -> bool:
        """Create ``name`` only if it does not exist (``link`` is atomic); True if this call made it.

        Two processes generating the same secret at once (two consumers starting) both
        end up with the one that was linked first.
        """
        _plain(name)
        temp = f".{name}.{secrets.token_hex(6)}.tmp"
        _write_at(self.fd, temp, content)
        try:
            os.link(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp, dir_fd=self.fd)

    def read(self, name: str) -> bytes | None:
        """The content of ``name`` (None if absent), refusing a symlink or a file others can read."""
        _plain(name)
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnsafeSecrets(f"secret {self.path / name} cannot be opened as a plain file ({exc.strerror}); "
                                "a symlink is refused: remove it and run the command again") from None
        with os.fdopen(fd, "rb") as handle:
            _check(os.fstat(handle.fileno()), self.path / name, "secret", directory=False)
            return handle.read()

    def exists(self, name: str) -> bool:
        _plain(name)
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


def _write_at(dir_fd: int, name: str, content: str | bytes) -> None:
    """Write ``name`` in the directory ``dir_fd`` under a fresh O_EXCL|O_NOFOLLOW name, then rename it into place."""
    _plain(name)
    data = content.encode() if isinstance(content, str) else content
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def _plain(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} must be a plain file name inside the secrets directory")


def write_private(path: Path, text: str | bytes) -> Path:
    """Write one private file (mode 0600, no symlink followed) in a directory that need not be private.

    For files such as ``compose/.env`` that live beside code: the file itself is created
    under a fresh name and renamed into place, so a symlink planted at ``path`` is
    replaced, not written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(path.parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        _write_at(parent, path.name, text)
    finally:
        os.close(parent)
    return path


def read_private_file(path: Path) -> bytes:
    """Read a secret file given by path (``password_file``): no symlink, owned by us, mode 0600 or stricter."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        raise UnsafeSecrets(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise UnsafeSecrets(f"secret file {path} cannot be opened as a plain file ({exc.strerror}); "
                            "a symlink is refused") from None
    with os.fdopen(fd, "rb") as handle:
        _check(os.fstat(handle.fileno()), path, "secret file", directory=False)
        return handle.read()
