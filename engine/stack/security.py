"""Least privilege on NATS: one credential per role, each allowed only its own subjects.

Five roles, and what each may do (everything else is denied by the server):

``producer``
    services recording decisions, outcomes and metrics: publish ``ro.evt.<rollout>.<kind>`` only (into
    JetStream, acks come back on its own inbox). It cannot publish or read control
    commands, touch the JetStream API (no stream purge, no KV read, no dead letters) or
    subscribe to anything but its inbox.
``engine``
    consumers, ticks, the operator API: publish control commands, ticks, stats and dead
    letters, use the JetStream API, answer requests. It alone can forge nothing a
    producer could not, since it never publishes a deeper ``ro.evt`` subject.
``service``
    services reading control state: the KV bucket ``ro_state`` (get and watch) and an
    ordered consumer on ``RO_LOG`` restricted by the server to ``ro.ctl.>``.
``app``
    a service using the SDK (``RolloutClient``), which both records events and follows
    control state on one connection: exactly ``producer`` plus ``service``. The SDK names
    its control follower, so it needs no unfiltered consumer create (whose consumer name
    sits in the request body, where no permission can see it).
``operator``
    people and tools: the API ``ro.api.>``, ``$SRV.>`` discovery, read-only JetStream
    info (``rollout status``), live ``ro.stats.>``, and a named ordered consumer on
    ``ro.ctl.>`` only (``rollout status --watch``, ``rollout wait``: control commands
    pushed as they are stored).

Every role gets its own inbox prefix (``_INBOX_<role>``): with the usual shared
``_INBOX.>`` any client allowed to subscribe to inboxes could read the replies and the
push-consumer deliveries of every other client (control messages, KV values).
Clients set it through ``engine.bus.connect`` (``inbox_prefix(user)``).

Passwords: random 256-bit tokens. The server configuration holds only their bcrypt
hashes (``rollout up --secure``) or environment references (compose), never a secret in
a committed file; each role's client settings file is written with mode 0600.
See docs/security.md for the threat model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rollout_engine.consumers import registry
from rollout_engine.consumers.consumer import store_name
from rollout_engine.engine.stack.passwords import (
    env_reference,
    hash_password,
    new_password,
    read_password,
)
from rollout_engine.engine.stack.private_files import PrivateDir, write_private
from rollout_engine.engine.stack.tls import write_certificates
from rollout_engine.events import subjects

__all__ = [
    "ROLES",
    "Role",
    "SecureFiles",
    "env_reference",
    "hash_password",
    "inbox_prefix",
    "new_password",
    "render_authorization",
    "render_compose_config",
    "roles",
    "write_private",
    "write_secure_dir",
]

ROLES: tuple[str, ...] = ("producer", "engine", "service", "app", "operator")
"""The roles, in the order the configuration lists them."""

_JS = "$JS.API"
_KV_STREAM = subjects.KV_STREAM


@dataclass(frozen=True, slots=True)
class Role:
    """What one role may publish and subscribe to (NATS allow lists; the rest is denied)."""

    name: str
    summary: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    deny_publish: tuple[str, ...] = ()


def inbox_prefix(user: str) -> str:
    """The inbox prefix of a user: ``_INBOX_<user>``, the only inboxes it may subscribe to."""
    if not user or not all(c.isalnum() or c in "-_" for c in user):
        raise ValueError(f"user name {user!r} must be letters, digits, '-' or '_' (it becomes a subject token)")
    return f"_INBOX_{user}"


def _control_reader() -> tuple[str, ...]:
    """JetStream API subjects a control-state reader needs, nothing that writes or deletes."""
    log, ctl = subjects.LOG_STREAM, subjects.CONTROL_ALL
    return (
        f"{_JS}.STREAM.NAMES",
        f"{_JS}.STREAM.INFO.{_KV_STREAM}",
        f"{_JS}.DIRECT.GET.{_KV_STREAM}",
        f"{_JS}.DIRECT.GET.{_KV_STREAM}.>",
        f"{_JS}.STREAM.MSG.GET.{_KV_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}",
        f"{_JS}.CONSUMER.CREATE.{_KV_STREAM}.>",
        f"{_JS}.CONSUMER.INFO.{_KV_STREAM}.*",
        # The filtered form only: the server checks the filter in the subject against
        # the consumer config, so no reader of ro.evt.> can be made with it.
        f"{_JS}.CONSUMER.CREATE.{log}.*.{ctl}",
        f"{_JS}.CONSUMER.INFO.{log}.*",
        f"$JS.FC.{_KV_STREAM}.>",
        f"$JS.FC.{log}.>",
    )


def engine_consumer_names(partitions: int = 0) -> tuple[str, ...]:
    """Every durable consumer name the engine may create on RO_LOG.

    One per registered consumer, and on a log of ``partitions`` partitions also each
    partition's ``<consumer>_p<k>`` (``consumers.consumer.store_name``), whichever
    process runs it.
    """
    names = sorted(registry.names())
    return tuple(store_name(name, k) for name in names for k in (None, *range(partitions)))


def _protect_engine_durables(partitions: int = 0) -> tuple[str, ...]:
    """Deny readers the create subjects that name an engine durable.

    JetStream treats a create for an existing consumer name as an update, and an update
    may change the filter: a reader allowed ``CONSUMER.CREATE.RO_LOG.*.ro.ctl.>`` could
    otherwise retarget the ``rollback`` consumer (or ``rollback_p0`` of a partitioned
    log) to control subjects only and silence every kill switch. Deny wins over allow in
    nats-server. An allow list by name prefix (``sdk-*``) is not possible: a NATS
    permission wildcard is a whole token, and a consumer name is one token (checked
    against nats-server 2.15: ``sdk-*`` matches only the literal name, which the server
    refuses). So every name the engine can use is listed, partitions included.
    """
    log = subjects.LOG_STREAM
    denied: list[str] = []
    for name in engine_consumer_names(partitions):
        denied += [f"{_JS}.CONSUMER.CREATE.{log}.{name}", f"{_JS}.CONSUMER.CREATE.{log}.{name}.>",
                   f"{_JS}.CONSUMER.DURABLE.CREATE.{log}.{name}", f"{_JS}.CONSUMER.INFO.{log}.{name}"]
    return tuple(denied)


def roles(partitions: int = 0) -> dict[str, Role]:
    """The permission table, built from the subject map (events.subjects) only.

    ``partitions``: the log's partition count, whose per-partition durables readers
    must not touch either.
    """
    ctl = subjects.CONTROL_ALL
    protected = _protect_engine_durables(partitions)
    return {
        "producer": Role(
            "producer",
            "publish producer events (ro.evt.<rollout>.<kind>) into JetStream; nothing else",
            publish=(subjects.EVENTS_PUBLISH,),
            subscribe=(f"{inbox_prefix('producer')}.>",),
        ),
        "engine": Role(
            "engine",
            "consumers, ticks and the API: control commands, JetStream API, replies",
            publish=(
                ctl,
                subjects.TICK,
                subjects.STATS_ALL,
                subjects.DLQ_ALL,
                f"{_JS}.>",
                "$JS.ACK.>",
                "$JS.FC.>",
                subjects.KV_ALL,
            ),
            subscribe=(subjects.ALL, "$SRV.>", f"{inbox_prefix('engine')}.>"),
            allow_responses=True,
        ),
        "service": Role(
            "service",
            "read control state (KV ro_state, an ordered consumer on ro.ctl.> only), report acknowledgements",
            publish=(*_control_reader(), subjects.ack_filter()),
            subscribe=(f"{inbox_prefix('service')}.>",),
            deny_publish=protected,
        ),
        "app": Role(
            "app",
            "a service using the SDK (RolloutClient): producer + control reader + acknowledgements",
            # No unfiltered `CONSUMER.CREATE.RO_LOG`: the SDK's follower is a named
            # consumer created through the filtered subject (docs/security.md).
            # Acknowledgements: its own KV entries only, never ro_state or control.
            publish=(subjects.EVENTS_PUBLISH, *_control_reader(), subjects.ack_filter()),
            subscribe=(f"{inbox_prefix('app')}.>",),
            deny_publish=protected,
        ),
        "operator": Role(
            "operator",
            "the operator API (ro.api.>, $SRV.>), read-only JetStream info, live stats",
            publish=(
                subjects.API_ALL,
                "$SRV.>",
                f"{_JS}.INFO",
                f"{_JS}.STREAM.NAMES",
                f"{_JS}.STREAM.LIST",
                f"{_JS}.STREAM.INFO.*",
                f"{_JS}.CONSUMER.NAMES.*",
                f"{_JS}.CONSUMER.LIST.*",
                f"{_JS}.CONSUMER.INFO.*.*",
                # Current state in KV (bandit views, stats snapshots): gets only, no watch.
                f"{_JS}.DIRECT.GET.{_KV_STREAM}",
                f"{_JS}.DIRECT.GET.{_KV_STREAM}.>",
                f"{_JS}.STREAM.MSG.GET.{_KV_STREAM}",
                # Follow control commands (watch, wait): the filtered create only, as for
                # the SDK, so no reader of ro.evt.> can be made and no durable retargeted.
                f"{_JS}.CONSUMER.CREATE.{subjects.LOG_STREAM}.*.{subjects.CONTROL_ALL}",
                f"$JS.FC.{subjects.LOG_STREAM}.>",
                # Read SDK acknowledgements (status, wait --applied): a filtered reader only.
                f"{_JS}.CONSUMER.CREATE.{subjects.ACK_STREAM}.*.{subjects.ACKS_ALL}",
                f"$JS.FC.{subjects.ACK_STREAM}.>",
            ),
            subscribe=(subjects.STATS_ALL, f"{inbox_prefix('operator')}.>"),
            deny_publish=_protect_engine_durables(),
        ),
    }


def _quoted(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def render_authorization(passwords: Mapping[str, str], *, env: bool = False, partitions: int = 0) -> str:
    """The ``authorization`` block of a nats-server config, one user per role given.

    ``passwords`` maps role -> what the server compares with: a bcrypt hash (quoted in
    the file), or with ``env=True`` ignored and replaced by an unquoted ``$RO_<ROLE>_PASSWORD``
    reference that nats-server resolves from its environment (compose). Roles are
    emitted in :data:`ROLES` order so the text is deterministic. ``partitions``: the
    log's partition count (see :func:`roles`).
    """
    table = roles(partitions)
    unknown = sorted(set(passwords) - set(table))
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {list(ROLES)}")
    lines = [
        "# Per-role users: rendered by engine/stack/security.py (docs/security.md). No anonymous access.",
        "authorization {",
        "  timeout: 2",
        "  users: [",
    ]
    for name in ROLES:
        if name not in passwords:
            continue
        role = table[name]
        secret = f"${env_reference(name)}" if env else json.dumps(passwords[name])
        lines += [
            f"    # {role.summary}",
            f"    {{user: {json.dumps(name)}, password: {secret}, permissions: {{",
            (f"      publish: {{allow: {_quoted(role.publish)}, deny: {_quoted(role.deny_publish)}}}"
             if role.deny_publish else f"      publish: {{allow: {_quoted(role.publish)}}}"),
            f"      subscribe: {{allow: {_quoted(role.subscribe)}}}",
        ]
        if role.allow_responses:
            lines.append("      allow_responses: true")
        lines.append("    }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


COMPOSE_LIMITS: dict[str, str] = {
    "max_payload": "8388608",
    "max_connections": "1024",
    "max_subscriptions": "10000",
    "max_pending": "67108864",
    "write_deadline": json.dumps("10s"),
}
"""Server limits of the compose stack: bounded connections, subscriptions and buffers."""


def render_compose_config(partitions: int = 0) -> str:
    """The complete nats-server config mounted by compose/docker-compose.yml.

    Same permission table as ``rollout up --secure``; passwords are ``$RO_<ROLE>_PASSWORD``
    references resolved from the container's environment (compose/.env, never
    committed). An undefined variable stops the server at start-up: it fails closed.
    """
    lines = [
        "# nats-server configuration of the compose stack. GENERATED from engine/stack/security.py by",
        "# `rollout secure compose-config --out compose/nats/nats-server.conf`: do not edit by hand.",
        "# Passwords come from the environment (compose/.env), never from this file.",
        'server_name: "rollout-nats"',
        'listen: "0.0.0.0:4222"',
        "# Monitoring for the container healthcheck only: loopback inside the container, not published.",
        'http: "127.0.0.1:8222"',
        *(f"{key}: {value}" for key, value in COMPOSE_LIMITS.items()),
        "jetstream {",
        '  store_dir: "/data/jetstream"',
        "  max_memory_store: 268435456",
        "  max_file_store: 10737418240",
        "}",
    ]
    return "\n".join(lines) + "\n" + render_authorization(dict.fromkeys(ROLES, ""), env=True,
                                                                partitions=partitions)


@dataclass(frozen=True, slots=True)
class SecureFiles:
    """What :func:`write_secure_dir` produced: the server include and one settings file per role."""

    directory: Path
    auth_conf: Path
    role_settings: dict[str, Path]
    passwords: dict[str, str]
    tls: dict[str, Path] | None = None

    def server_include(self, config_dir: Path) -> str:
        """Config text for ``EmbeddedServer(extra_config=...)``: include the 0600 auth file, and TLS.

        nats-server resolves an ``include`` relative to the config file's directory (even
        an absolute path), so the path is made relative to ``config_dir``.
        """
        auth = os.path.relpath(self.auth_conf.resolve(), Path(config_dir).resolve())
        text = f"include {json.dumps(auth)}\n"
        if self.tls:
            text += (
                "tls {\n"
                f"  cert_file: {json.dumps(str(self.tls['cert']))}\n"
                f"  key_file: {json.dumps(str(self.tls['key']))}\n"
                "  timeout: 2\n"
                "}\n"
            )
        return text


PASSWORD_FILE = "{role}.password"
"""A role's password alone, for ``password_file``: ``rollout up`` hands its children this path."""


def write_secure_dir(directory: Path, data_dir: Path, *, tls: bool = False, hosts: tuple[str, ...] = ("127.0.0.1",),
                     partitions: int = 0) -> SecureFiles:
    """Create (or reuse) per-role credentials under ``directory``, all files mode 0600.

    The directory must be this user's and closed to group and others
    (:class:`~rollout_engine.engine.stack.private_files.PrivateDir` refuses it otherwise); files are
    written without following symlinks. Passwords survive restarts (a consumer restarted
    by the supervisor, or a service holding its settings file, keeps working); delete
    the directory to rotate them. Each ``<role>.toml`` is a settings file: ``rollout
    --config DIR/operator.toml status``; ``engine.password`` holds the engine's password
    alone (see ``password_file``). ``partitions``: the log's partition count, whose
    durables the reader roles are denied too.
    """
    passwords: dict[str, str] = {}
    settings_files: dict[str, Path] = {}
    with PrivateDir(directory) as private:
        for role in ROLES:
            name = f"{role}.toml"
            password = read_password(private.read(name)) or new_password()
            passwords[role] = password
            settings_files[role] = private.write(
                name,
                "# rollout-engine client settings for the "
                f"{role} role (docs/security.md). Keep private: mode 0600.\n"
                "[engine]\n"
                f"data_dir = {json.dumps(str(data_dir))}\n"
                "secure = true\n"
                f"user = {json.dumps(role)}\n"
                f"password = {json.dumps(password)}\n",
            )
        private.write(PASSWORD_FILE.format(role="engine"), passwords["engine"] + "\n")
        hashes = {role: hash_password(pw) for role, pw in passwords.items()}
        auth = private.write("auth.conf", render_authorization(hashes, partitions=partitions))
    tls_files = None
    if tls:
        tls_files = write_certificates(directory / "tls", hosts)
    return SecureFiles(directory, auth, settings_files, passwords, tls_files)
