"""``rollout secure``: per-role credentials for ``rollout up --secure`` and the compose stack.

With ``rollout up --secure``, credentials are created once under DATA_DIR/secure/ (mode 0600, reused on restart), the server includes the bcrypt-hashed
users, ``rollout up`` and its consumers connect as ``engine``, and every other client
uses its role's settings file: ``rollout --config DATA_DIR/secure/operator.toml status``.

Subcommands:

- ``rollout secure init [--tls]``: create the credentials without starting anything.
- ``rollout secure compose-config [--out FILE] [--check]``: render the compose stack's
  nats-server config from the same permission table (a test keeps the committed file fresh).
- ``rollout secure compose-env [--out FILE]``: random passwords for compose/.env (0600).
- ``rollout secure rotate-signing-key``: a new key for signing control commands; the old
  public keys stay in the ring (docs/operations.md, "Signing key").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from rollout_engine.engine.cli.common import CliError, settings_from
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.private_files import PrivateDir, UnsafeSecrets
from rollout_engine.engine.stack.security import (
    PASSWORD_FILE,
    ROLES,
    SecureFiles,
    env_reference,
    new_password,
    render_compose_config,
    write_private,
    write_secure_dir,
)
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys, rotate

__all__ = ["SecureMode", "add_up_flags", "prepare", "register"]

COMPOSE_CONFIG = Path("compose/nats/nats-server.conf")
COMPOSE_ENV = Path("compose/.env")
ROUTE_PASSWORD_FILE = "route.password"


@dataclass(slots=True)
class SecureMode:
    """What ``rollout up`` needs to run with credentials: server config, its own identity, children's env."""

    files: SecureFiles
    partitions: int = 0
    """Partitions whose engine durables the rendered authorization protects."""

    def extra_config(self, server_dir: Path) -> str:
        return self.files.server_include(server_dir)

    def engine_settings(self, settings: Settings) -> Settings:
        """The settings of ``rollout up`` itself: the engine role."""
        return msgspec.structs.replace(settings, secure=True, user="engine", password=self.files.passwords["engine"])

    def child_env(self) -> dict[str, str | None]:
        """Environment of the supervised consumers: engine role; the CA when TLS is on.

        The password itself stays out of the environment (readable in ``/proc/<pid>/environ``
        by the same user and inherited by anything a child starts): children get the path
        of the 0600 ``engine.password`` file, and an inherited ``ROLLOUT_PASSWORD`` is removed.
        """
        env: dict[str, str | None] = {
            "ROLLOUT_SECURE": "true", "ROLLOUT_USER": "engine", "ROLLOUT_PASSWORD": None,
            "ROLLOUT_PASSWORD_FILE": str((self.files.directory / PASSWORD_FILE.format(role="engine")).absolute()),
        }
        if self.files.tls:
            env["SSL_CERT_FILE"] = str(self.files.tls["ca"])
        return env

    def route_password(self) -> str:
        """The password of the cluster routes (``route.password`` beside the others, made once)."""
        with PrivateDir(self.files.directory) as private:
            private.create(ROUTE_PASSWORD_FILE, new_password() + "\n")
            return (private.read(ROUTE_PASSWORD_FILE) or b"").decode().strip()

    def cover_partitions(self, settings: Settings, partitions: int) -> bool:
        """Re-render the authorization for a log of ``partitions`` partitions when it was rendered
        for fewer (the log existed before, with more than the settings say); True if it changed.
        The caller reloads the server(s)."""
        if partitions <= self.partitions:
            return False
        files = write_secure_dir(self.files.directory, settings.data_path, tls=bool(self.files.tls),
                                 partitions=partitions)
        self.files, self.partitions = files, partitions
        return True

    def describe(self) -> str:
        lines = [f"secure mode: per-role credentials in {self.files.directory} (mode 0600):"]
        lines += [f"  {role:<9} rollout --config {path} ..." for role, path in self.files.role_settings.items()]
        if self.files.tls:
            lines.append(f"  TLS on: clients trust the CA with SSL_CERT_FILE={self.files.tls['ca']}")
        return "\n".join(lines)


def prepare(settings: Settings, *, tls: bool = False) -> SecureMode | None:
    """Secure mode for ``rollout up`` when ``--secure`` or ``secure = true``; else None.

    With TLS this process trusts the generated CA through ``SSL_CERT_FILE`` (the default
    ``ssl`` context reads it), so its own connection verifies the server certificate.
    """
    if not (settings.secure or tls):
        return None
    hosts = tuple(h for h in (settings.host, socket.gethostname()) if h and h not in ("0.0.0.0", "::"))
    try:
        files = write_secure_dir(settings.data_path / "secure", settings.data_path, tls=tls, hosts=hosts,
                                 partitions=settings.partitions)
        EngineIds.load(settings)  # the key of the engine's message ids, beside the passwords
        CommandSigner.load(settings)  # the key that signs control commands
    except UnsafeSecrets as exc:
        raise CliError(str(exc)) from None
    if files.tls:
        os.environ["SSL_CERT_FILE"] = str(files.tls["ca"])
    return SecureMode(files, settings.partitions)


def add_up_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``rollout up`` gains from secure mode."""
    parser.add_argument("--secure", action="store_true", default=None,
                        help="require per-role credentials (written to DATA_DIR/secure, mode 0600); "
                             "needed for a non-loopback --host")
    parser.add_argument("--tls", action="store_true",
                        help="with --secure: TLS with a generated CA and server certificate")


def _init(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    mode = prepare(msgspec.structs.replace(settings, secure=True), tls=args.tls)
    assert mode is not None
    print(mode.describe())
    return 0


def _compose_config(args: argparse.Namespace) -> int:
    target = Path(args.out)
    rendered = render_compose_config(args.partitions)
    if args.check:
        if not target.exists() or target.read_text() != rendered:
            raise CliError(f"{target} is stale: run `rollout secure compose-config --out {target}`")
        print(f"{target} is up to date")
        return 0
    if args.out == "-":
        sys.stdout.write(rendered)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(rendered)
    print(f"wrote {target}")
    return 0


def compose_env_text() -> str:
    """compose/.env content: a fresh random password per role, and Grafana's admin password."""
    lines = ["# Passwords of the compose stack (docs/compose.md). Private: mode 0600, never commit."]
    lines += [f"{env_reference(role)}={new_password()}" for role in ROLES]
    lines.append(f"GRAFANA_ADMIN_PASSWORD={secrets.token_urlsafe(24)}")
    return "\n".join(lines) + "\n"


def _compose_env(args: argparse.Namespace) -> int:
    target = Path(args.out)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; keep it, or pass --force to rotate every password")
    write_private(target, compose_env_text())
    print(f"wrote {target} (mode 0600) with passwords for {', '.join(ROLES)}")
    return 0


def _rotate_signing_key(args: argparse.Namespace) -> int:
    from rollout_engine.engine.bus import connect

    settings = settings_from(args)
    try:
        signer = rotate(settings)
    except UnsafeSecrets as exc:
        raise CliError(str(exc)) from None
    print(f"new signing key {signer.key_id}; ring of {len(signer.ring.keys)} keys in "
          f"{settings.data_path / 'signing-keys.json'} (older keys stay valid for older commands)")

    async def publish() -> bool:
        nc = await connect(settings, name="rollout-secure", reconnect=False)
        try:
            return await publish_keys(nc.jetstream(), signer.ring, replace=True)
        finally:
            await nc.close()

    try:
        published = asyncio.run(publish())
    except Exception:
        published = False
    print("ring published in KV ro_state engine.signing_keys" if published else
          "NATS not reachable: the ring reaches KV when `rollout up` or `rollout api` next starts")
    print("restart the engine's processes (rollout up, rollout api) so they sign with the new key")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("secure", help="per-role NATS credentials and the compose NATS config",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="secure_command", metavar="ACTION")
    actions.required = True
    init = actions.add_parser("init", help="create per-role credentials under DATA_DIR/secure")
    init.add_argument("--tls", action="store_true", help="also generate a CA and a server certificate")
    init.set_defaults(handler=_init)
    config = actions.add_parser("compose-config", help="render the compose stack's nats-server config")
    config.add_argument("--out", default=str(COMPOSE_CONFIG), help=f"output file, or - for stdout (default {COMPOSE_CONFIG})")
    config.add_argument("--check", action="store_true", help="fail if the file differs from a fresh render")
    config.add_argument("--partitions", type=int, default=0, metavar="P",
                        help="the log's partition count: readers are also denied its per-partition durables")
    config.set_defaults(handler=_compose_config)
    env = actions.add_parser("compose-env", help="write random per-role passwords for compose (mode 0600)")
    env.add_argument("--out", default=str(COMPOSE_ENV), help=f"output file (default {COMPOSE_ENV})")
    env.add_argument("--force", action="store_true", help="overwrite an existing file (rotates every password)")
    env.set_defaults(handler=_compose_env)
    rotate_key = actions.add_parser("rotate-signing-key",
                                    help="new key for signing control commands; old public keys stay valid")
    rotate_key.set_defaults(handler=_rotate_signing_key)
