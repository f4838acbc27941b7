"""The SDK's connection to the engine: NATS (or offline), control state, publisher, outbox.

:class:`SdkConnection` is everything a service's client holds open: the NATS connection
(reconnected after an outage, or started later with ``allow_offline``), the control
follower (``engine.sdk.follower``), the batch publisher with its SQLite outbox
(``engine.sdk.publisher``, ``engine.sdk.outbox``), background tasks (shadow runs,
callbacks) and the selection counts moved to Prometheus every second.
:class:`engine.sdk.client.RolloutClient` adds what a service calls on top of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Self

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from rollout_engine.engine.bus import BusUnavailable, connect
from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.acks import AckReporter
from rollout_engine.engine.sdk.follower import ControlFollower, OnChange
from rollout_engine.engine.sdk.outbox import Outbox
from rollout_engine.engine.sdk.publisher import BatchPublisher, BufferFull
from rollout_engine.engine.sdk.signatures import KV_KEY, ControlVerifier, KeyRing
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.events import ControlState, subjects
from rollout_engine.events.ids import check_token

__all__ = ["METRICS_INTERVAL_S", "SdkConnection"]

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 1.0


class SdkConnection:
    """NATS, the control follower, the publisher and its outbox; use as an async context manager.

    Args:
        settings: engine settings (NATS URL, credentials, data dir); default: load_settings().
        producer: this service's name, stamped on every event (a token).
        outbox_path: SQLite outbox file; default ``<data_dir>/outbox-<producer>.sqlite``.
            Give each process its own file; a restarted process drains what it left.
        batch_size, linger_s: a batch is sent at ``batch_size`` events or ``linger_s``
            after its first event, whichever comes first (defaults: 250, 5 ms).
        max_buffered: events held in memory at most; see ``BufferFull``.
        buffer_timeout_s: how long the async ``record_*`` methods wait for space.
        ack_timeout_s: a batch not acked within it goes to the outbox.
        on_change: ``callback(rollout, state)`` (sync or async) after each state change.
        allow_offline: start even if NATS is unreachable, serving the safe default state
            (everyone on the baseline) and recording into the outbox until NATS answers.
        require_signed: refuse every control command not signed by a known engine key
            (never applied as sent, though a refused kill switch still stops the candidate;
            logged; ``rollout_control_refused_total``). Default: on in secure mode
            (``settings.secure``), else only badly signed commands are refused.
        signing_keys: pin the engine's public keys (a :class:`KeyRing` or the path of
            ``signing-keys.json``) instead of reading them from KV ``ro_state``
            (``engine.signing_keys``). See docs/sdk.md, "Signed control commands".
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        producer: str = "sdk",
        outbox_path: str | Path | None = None,
        batch_size: int = 250,
        linger_s: float = 0.005,
        max_buffered: int = 100_000,
        buffer_timeout_s: float = 5.0,
        ack_timeout_s: float = 2.0,
        catch_up_timeout_s: float = 5.0,
        on_change: OnChange | None = None,
        allow_offline: bool = False,
        require_signed: bool | None = None,
        signing_keys: KeyRing | str | Path | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.producer = check_token(producer, "producer")
        self.outbox_path = Path(outbox_path or self.settings.data_path / f"outbox-{producer}.sqlite")
        self.allow_offline = allow_offline
        self._publisher_args = {
            "batch_size": batch_size,
            "linger_s": linger_s,
            "max_buffered": max_buffered,
            "ack_timeout_s": ack_timeout_s,
        }
        self.buffer_timeout_s = buffer_timeout_s
        self.catch_up_timeout_s = catch_up_timeout_s
        self.control = ControlFollower(self.producer, on_change=on_change, spawn=self._spawn,
                                       catch_up_timeout_s=catch_up_timeout_s)
        self._selections: dict[tuple[str, str, str], int] = {}
        self._synced = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: BatchPublisher | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._housekeeping: set[asyncio.Future[Any]] = set()
        self._metrics_task: asyncio.Future[None] | None = None
        pinned = signing_keys if isinstance(signing_keys, KeyRing) or signing_keys is None \
            else KeyRing.decode(Path(signing_keys).read_bytes())
        self.control.verifier = ControlVerifier(
            require_signed=self.settings.secure if require_signed is None else require_signed, ring=pinned)
        if pinned is None:
            self.control.refresh_keys = self._refresh_keys
        self._keys_read_at = float("-inf")
        self._acks = AckReporter(self, self._jetstream)  # revisions applied -> KV ro_acks (engine/sdk/acks.py)
        self.control.after_fold, self.control.after_catch_up = self._acks.observe, self._acks.caught_up

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> Self:
        """Open the outbox, connect, and read the control state up to the end of the log."""
        outbox = await Outbox.open(self.outbox_path)
        self._publisher = BatchPublisher(outbox, self._jetstream, **self._publisher_args)  # type: ignore[arg-type]
        self._metrics_task = asyncio.ensure_future(self._metrics_loop())
        try:
            await self._connect()
        except BusUnavailable:
            if not self.allow_offline:
                await self.close(0)
                raise
            log.warning("rollout SDK: NATS unreachable, starting offline (baseline only, outbox on)")
            self._spawn(self._connect_later(), wait_on_close=False)
        return self

    async def _connect(self) -> None:
        self._nc = await connect(self.settings, name=f"sdk-{self.producer}", on_event=self._on_bus_event)
        self._js = self._nc.jetstream()
        try:
            if self.control.refresh_keys is not None:
                await self.control.refresh_keys()
            await self.control.follow(self._js, wait=True)
            self._synced = True
        except BaseException:
            nc, self._nc, self._js = self._nc, None, None
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._acks.start()
        assert self._publisher is not None
        self._publisher.kick()

    async def _connect_later(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._connect()
                log.info("rollout SDK: connected; draining the outbox")
                return
            except BusUnavailable:
                continue
            except Exception:
                log.exception("rollout SDK: connecting failed; retrying")

    async def _refresh_keys(self) -> None:
        """Read the engine's key ring from KV (at most once a second: a forger's unknown key ids cost nothing)."""
        now = time.monotonic()
        if self._js is None or now - self._keys_read_at < 1.0:
            return
        self._keys_read_at = now
        try:
            kv = await self._js.key_value(subjects.STATE_BUCKET)
            entry = await kv.get(KV_KEY)
            if entry.value:
                self.control.verifier.add(KeyRing.decode(entry.value))  # type: ignore[union-attr]
        except KeyNotFoundError:
            if self.control.verifier is not None and self.control.verifier.require_signed:
                log.warning("rollout SDK: the engine has published no signing keys (KV %s) yet; control commands "
                            "are refused until it does", KV_KEY)
        except Exception as exc:
            log.warning("rollout SDK: could not read the engine's signing keys from KV %s (%s)", KV_KEY, exc)

    async def _on_bus_event(self, kind: str) -> None:
        if kind == "disconnected" and self._publisher is not None:
            self._publisher.connection_lost()
        if kind == "reconnected":
            # The server may have restarted and lost our ephemeral consumer: subscribe
            # anew (last per subject), then push the outbox.
            self._spawn(self.control.refollow(self._js), wait_on_close=False)
            if self._publisher is not None:
                self._publisher.kick()

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            self.sync_metrics()

    def sync_metrics(self) -> None:
        """Move the selection counts kept on the hot path into ``rollout_selection_total``
        (done every second; a dict increment costs a fifth of a labelled Counter.inc())."""
        counts, self._selections = self._selections, {}
        for (rollout, variant, reason), n in counts.items():
            m.selection_counter(rollout, variant, reason).inc(n)

    async def close(self, timeout: float = 10.0) -> None:
        """Finish shadow runs, flush every buffered event (to NATS, else the outbox), close."""
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            self._metrics_task = None
        self.sync_metrics()
        for task in list(self._background):
            if task in self._housekeeping:
                task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
        for task in list(self._background):
            task.cancel()
        await self._acks.close()
        if self._publisher is not None:
            await self._publisher.close(timeout)
            await self._publisher.outbox.close()
            self._publisher = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any], *, wait_on_close: bool = True) -> None:
        """Run ``coro`` in the background; close() waits for it (shadow runs, callbacks)
        or cancels it (``wait_on_close=False``: reconnect housekeeping)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if not wait_on_close:
            self._housekeeping.add(task)
            task.add_done_callback(self._housekeeping.discard)

    def _jetstream(self) -> JetStreamContext | None:
        nc = self._nc
        return self._js if nc is not None and nc.is_connected else None

    # --- control state ----------------------------------------------------------------
    @property
    def on_change(self) -> OnChange | None:
        """``callback(rollout, state)`` after each state change; may be replaced at any time
        (the OpenFeature provider chains itself in front of it)."""
        return self.control.on_change

    @on_change.setter
    def on_change(self, callback: OnChange | None) -> None:
        self.control.on_change = callback

    def state(self, rollout: str) -> ControlState:
        """The rollout's current control state (the safe default before any command)."""
        return self.control.state(rollout)

    def control_seq(self, rollout: str) -> int:
        """Log sequence of the command that set :meth:`state` (0: no command seen yet)."""
        return self.control.control_seq(rollout)

    @property
    def connected(self) -> bool:
        """True while NATS is connected; False offline or reconnecting (state may be stale)."""
        return self._jetstream() is not None

    @property
    def synced(self) -> bool:
        """True once the control log was read to its end: :meth:`state` is then the
        engine's (possibly stale while not :attr:`connected`), not an offline default."""
        return self._synced

    # --- the buffer ---------------------------------------------------------------------
    def _publisher_or_raise(self) -> BatchPublisher:
        if self._publisher is None:
            raise RuntimeError("RolloutClient is not started: use `async with RolloutClient(...)` or await start()")
        return self._publisher

    async def wait_room(self, events: int = 1, timeout: float | None = None) -> None:
        """Back-pressure for synchronous callers: wait until ``events`` more events fit in
        the buffer (up to ``timeout``, default ``buffer_timeout_s``), else raise BufferFull.

        A service that makes bursts of ``assign()`` calls without awaiting anything in
        between awaits this before each burst, so ``assign()`` never meets a full buffer.
        """
        publisher = self._publisher_or_raise()
        wait = self.buffer_timeout_s if timeout is None else timeout
        if not await publisher.wait_room(events, wait):
            raise BufferFull(
                f"no room for {events} events within {wait}s ({publisher.buffered} buffered, "
                f"max_buffered={publisher.max_buffered}): JetStream and the outbox are not keeping up"
            )

    async def flush(self, timeout: float = 10.0) -> None:
        """Send everything buffered now (to JetStream, or the outbox if it is away)."""
        await self._publisher_or_raise().flush(timeout)

    @property
    def outbox_depth(self) -> int:
        """Events waiting in the outbox for NATS."""
        return self._publisher.outbox.depth if self._publisher is not None else 0

    async def wait_outbox_empty(self, timeout: float) -> bool:
        """Wait until the outbox drained (True) or ``timeout`` passed (False)."""
        publisher = self._publisher_or_raise()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await publisher.drain_outbox(max(0.0, deadline - time.monotonic())):
                return True
            await asyncio.sleep(0.05)
        return False
