"""The NATS edge: connect with reconnects and a clear error, and provision JetStream.

Provisioning is idempotent and never overwrites what an operator tuned (FastStream
overwrote stream settings at start-up; we do not): a missing stream or bucket is
created, an existing one only gains subjects it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client
from nats.errors import AuthorizationError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)

from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.private_files import UnsafeSecrets, read_private_file
from rollout_engine.events import subjects

__all__ = ["BusUnavailable", "cluster_still_forming", "connect", "provision", "stream_config"]

log = logging.getLogger(__name__)


class BusUnavailable(ConnectionError):
    """No NATS server answered, or it refused us; the message says where, why and what to do."""


CLOSE_GRACE_S = 0.5
"""How long a failed first connect may take to close (nats-py's close can hang: see connect)."""


async def connect(
    settings: Settings,
    *,
    name: str = "rollout-engine",
    url: str | None = None,
    reconnect: bool = True,
    on_event: Callable[[str], Awaitable[None]] | None = None,
) -> Client:
    """Connect to NATS; retry forever once connected, fail fast and clearly before.

    ``on_event`` receives ``"disconnected"`` / ``"reconnected"`` / ``"closed"`` (the SDK
    switches to its outbox on those).

    The first connection has a deadline (``connect_timeout_s`` per server, plus 1 s), and
    a failure that retrying cannot fix ends it at once: a TLS handshake the client
    refuses (no trusted CA, wrong host name) or refused credentials. nats-py reports
    those only to its error callback and then retries, and after a failed TLS upgrade
    its close never returns (it waits on the plain socket's writer, whose transport the
    failed upgrade took over: nats-io/nats.py#718). So the attempt runs as a task this
    function cancels, and closing the half-open client gets ``CLOSE_GRACE_S``; the
    socket itself is already closed by then.
    """
    target = url or settings.resolved_url()
    servers = [s.strip() for s in target.split(",") if s.strip()]

    async def _cb(kind: str) -> None:
        if on_event is not None:
            await on_event(kind)

    async def disconnected() -> None:
        await _cb("disconnected")

    async def reconnected() -> None:
        await _cb("reconnected")

    async def closed() -> None:
        await _cb("closed")

    fatal: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
    errors: list[Exception] = []

    async def error(exc: Exception) -> None:
        log.debug("nats error: %s", exc)
        if not client.is_connected:
            errors.append(exc)
            if _is_fatal(exc) and not fatal.done():
                fatal.set_result(exc)

    options: dict[str, object] = {}
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or _password_from_file(settings.password_file)
        # Secure mode: each role may subscribe only to its own inboxes (engine/stack/security.py).
        options["inbox_prefix"] = f"_INBOX_{settings.user}"
    client = Client()
    # nats-py retries the initial connect forever whatever max_reconnect_attempts says,
    # so the first connection gets a deadline of its own.
    deadline = settings.connect_timeout_s * max(1, len(servers)) + 1.0
    attempt = asyncio.ensure_future(
        client.connect(
            servers=servers,
            name=name,
            connect_timeout=settings.connect_timeout_s,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1 if reconnect else 0,
            reconnect_time_wait=0.25,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=closed,
            error_cb=error,
            pending_size=64 * 1024 * 1024,
            **options,  # type: ignore[arg-type]
        )
    )
    try:
        await asyncio.wait({attempt, fatal}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        attempt.cancel()
        raise
    if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
        return client
    failure: BaseException | None = None
    if fatal.done():
        failure = fatal.result()
    elif attempt.done() and not attempt.cancelled():
        failure = attempt.exception()
    attempt.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(_close_quietly(client, attempt)), CLOSE_GRACE_S)
    raise BusUnavailable(_connect_failure(settings, servers, failure, errors[-1] if errors else None, deadline))


async def _close_quietly(client: Client, attempt: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        await attempt
    with contextlib.suppress(Exception):
        await client.close()


def _is_fatal(exc: BaseException) -> bool:
    """A first-connect error that retrying cannot fix: TLS trust, or refused credentials."""
    return isinstance(exc, ssl.SSLError | AuthorizationError) or "authorization violation" in str(exc).lower()


def _connect_failure(settings: Settings, servers: list[str], failure: BaseException | None,
                     last_error: Exception | None, deadline: float) -> str:
    """The message of a failed first connect: what failed, where, and what to do."""
    where = ", ".join(servers)
    cause = failure if failure is not None and _is_fatal(failure) else last_error
    if isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
        ca = settings.data_path / "secure" / "tls" / "ca.pem"
        trust = f"SSL_CERT_FILE={ca}" if ca.exists() else "SSL_CERT_FILE=DATA_DIR/secure/tls/ca.pem"
        return (
            f"TLS handshake with {where} failed: {reason} ({type(cause).__name__}). "
            f"This client does not trust the server's certificate: set {trust} (the CA that "
            "`rollout up --secure --tls` generated), and connect by a host name the certificate "
            "lists (docs/security.md)"
            + (f"; SSL_CERT_FILE is set to {os.environ['SSL_CERT_FILE']}" if os.environ.get("SSL_CERT_FILE") else "")
        )
    if cause is not None and _is_fatal(cause):
        who = f"user {settings.user!r}" if settings.user else "no credentials"
        return (
            f"the NATS server at {where} refused {who} (authorization violation): use the role's "
            "settings file (`rollout --config DATA_DIR/secure/<role>.toml ...`) or set "
            "ROLLOUT_USER and ROLLOUT_PASSWORD (docs/security.md)"
        )
    detail = f"{type(failure).__name__}: {failure}" if failure is not None else f"no answer within {deadline:.1f}s"
    if last_error is not None and failure is None:
        detail += f"; last error: {type(last_error).__name__}: {last_error}"
    return (
        f"no NATS server answered at {where} ({detail}); "
        "start one with `rollout up`, or point ROLLOUT_NATS_URL at yours"
    )


def stream_config(settings: Settings) -> list[StreamConfig]:
    """The streams the engine needs, from the settings."""
    return [
        StreamConfig(
            name=subjects.LOG_STREAM,
            description="rollout-engine log: producer events, control commands and ticks in one order",
            subjects=list(subjects.LOG_SUBJECTS),
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.dedupe_window_s,
            max_age=settings.log_max_age_s,
            max_bytes=settings.log_max_bytes,
            discard=DiscardPolicy.OLD,
            max_msg_size=settings.max_payload_bytes,
            subject_transform=_partitioning(settings),
        ),
        StreamConfig(
            name=subjects.DLQ_STREAM,
            description="rollout-engine dead letters: original bytes, stream sequence and reason",
            subjects=[subjects.DLQ_ALL],
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=30 * 24 * 3600.0,
            discard=DiscardPolicy.OLD,
            max_msg_size=settings.max_payload_bytes,
        ),
    ]


def _password_from_file(path: str) -> str:
    """The password in ``password_file`` (checked: no symlink, ours, mode 0600), or ""."""
    if not path:
        return ""
    try:
        return read_private_file(Path(path)).decode().strip()
    except UnsafeSecrets as exc:
        raise BusUnavailable(f"{exc} (the password_file setting)") from None


def _partitioning(settings: Settings) -> SubjectTransform | None:
    """The log's subject transform that appends the rollout's partition (docs/scaling.md)."""
    if not settings.partitions:
        return None
    src, dest = subjects.partition_transform(settings.partitions)
    return SubjectTransform(src=src, dest=dest)


def _check_partitioning(info_transform: SubjectTransform | None, settings: Settings) -> None:
    """A partition count differs from the existing log's: refuse rather than remap keys."""
    if not settings.partitions:
        return  # unpartitioned clients (status, SDK, tools) work with either log
    have = subjects.partition_count(info_transform.dest if info_transform else None)
    if have != settings.partitions:
        raise BusUnavailable(
            f"stream {subjects.LOG_STREAM} exists with {have or 'no'} partitions but partitions = {settings.partitions} "
            "was asked: the partition count is fixed when the log is created (changing it would move rollouts "
            "between partitions mid-stream). Use the existing count, or create a new log (docs/scaling.md)"
        )


NO_PEERS_FOR_PLACEMENT = 10005
"""JetStream's error code while a forming cluster does not yet know enough peers for the replicas."""


def cluster_still_forming(exc: Exception) -> bool:
    """Whether a JetStream API error only means the cluster is not ready yet (retry), not a bad request."""
    if isinstance(exc, BadRequestError):
        return exc.err_code == NO_PEERS_FOR_PLACEMENT
    return isinstance(exc, (ServiceUnavailableError, NoRespondersError, TimeoutError))


async def provision(js: JetStreamContext, settings: Settings, wait_s: float = 30.0) -> list[str]:
    """Create what is missing; return a line per action taken (for ``rollout up``'s log).

    A fresh cluster answers "JetStream not ready" until it has elected its meta leader
    (about 5 s for 3 nodes here), and for a moment after that "no suitable peers for
    placement" while the leader still learns the other nodes (a replicated stream needs
    them), so provisioning retries both for up to ``wait_s`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            return await _provision_once(js, settings)
        except Exception as exc:
            if not cluster_still_forming(exc):
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise BusUnavailable(f"JetStream did not become ready within {wait_s:.0f}s: {exc}") from None
            await asyncio.sleep(0.5)


async def _provision_once(js: JetStreamContext, settings: Settings) -> list[str]:
    actions: list[str] = []
    for config in stream_config(settings):
        try:
            info = await js.stream_info(config.name)  # type: ignore[arg-type]
        except NotFoundError:
            await js.add_stream(config)
            actions.append(f"created stream {config.name}")
            continue
        if config.name == subjects.LOG_STREAM:
            _check_partitioning(info.config.subject_transform, settings)
        have = set(info.config.subjects or [])
        wide = have & subjects.WIDE_LOG_SUBJECTS if config.name == subjects.LOG_STREAM else set()
        if wide:  # a log from before the exact depths: narrow it (a security fix, not tuning)
            info.config.subjects = sorted((have - wide) | set(config.subjects or []))
            await js.update_stream(info.config)
            actions.append(f"narrowed stream {config.name} subjects {sorted(wide)} to {config.subjects}")
            continue
        missing = [s for s in config.subjects or [] if s not in have]
        if missing:
            info.config.subjects = sorted(have | set(missing))
            await js.update_stream(info.config)
            actions.append(f"added subjects {missing} to stream {config.name}")
    try:
        await js.key_value(subjects.STATE_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_key_value(
            bucket=subjects.STATE_BUCKET,
            description="current state per rollout: control, stats snapshots, bandit arms",
            history=5,
            replicas=settings.replicas,
            storage=StorageType.FILE,
        )
        actions.append(f"created KV bucket {subjects.STATE_BUCKET}")
    try:
        await js.key_value(subjects.ACK_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_key_value(  # one entry per SDK instance, each with its own TTL (docs/sdk.md)
            bucket=subjects.ACK_BUCKET,
            description="SDK acknowledgements: the control revision each service instance applied",
            history=1,
            ttl=ACK_BUCKET_MAX_AGE_S,
            replicas=settings.replicas,
            storage=StorageType.FILE,
        )
        actions.append(f"created KV bucket {subjects.ACK_BUCKET}")
    return actions


ACK_BUCKET_MAX_AGE_S = 24 * 3600.0
"""Upper bound on any acknowledgement's life, whatever TTL its publisher asked for."""
