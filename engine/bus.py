"""The NATS edge: connect with reconnects and a clear error, and provision JetStream.

Provisioning is idempotent and never overwrites what an operator tuned (FastStream
overwrote stream settings at start-up; we do not): a missing stream or bucket is
created, an existing one only gains subjects it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.errors import NoRespondersError, NoServersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError

from engine.settings import Settings
from events import subjects

__all__ = ["BusUnavailable", "connect", "provision", "stream_config"]

log = logging.getLogger(__name__)


class BusUnavailable(ConnectionError):
    """No NATS server answered; the message says where we looked and what to do."""


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

    async def error(exc: Exception) -> None:
        log.debug("nats error: %s", exc)

    options: dict[str, object] = {}
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password
        # Secure mode: each role may subscribe only to its own inboxes (engine/security.py).
        options["inbox_prefix"] = f"_INBOX_{settings.user}"
    client = Client()
    # nats-py retries the initial connect forever whatever max_reconnect_attempts says,
    # so the first connection gets a deadline of its own.
    deadline = settings.connect_timeout_s * max(1, len(servers)) + 1.0
    try:
        await asyncio.wait_for(
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
            ),
            deadline,
        )
        return client
    except (NoServersError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await client.close()
        raise BusUnavailable(
            f"no NATS server answered at {', '.join(servers)} ({type(exc).__name__}: {exc}); "
            "start one with `rollout up`, or point ROLLOUT_NATS_URL at yours"
        ) from None


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


async def provision(js: JetStreamContext, settings: Settings, wait_s: float = 30.0) -> list[str]:
    """Create what is missing; return a line per action taken (for ``rollout up``'s log).

    A fresh cluster answers "JetStream not ready" until it has elected its meta leader
    (about 5 s for 3 nodes here), so provisioning retries for up to ``wait_s`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            return await _provision_once(js, settings)
        except (ServiceUnavailableError, NoRespondersError, TimeoutError) as exc:
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
        have = set(info.config.subjects or [])
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
    return actions
