"""Acknowledgements: this service instance tells the engine which control revision it applied.

When the engine fires a kill switch, the on-call question is whether every running
instance has stopped sending traffic to the candidate. Each ``RolloutClient`` answers it
for itself through an :class:`AckReporter`:

* **identity**: service (the client's ``producer``), instance id
  (``<host>-<pid>-<random>``, unique per client), host, pid, SDK version;
* **what it applied**: per rollout, the control revision (log sequence of the command
  that set the state, ``RolloutClient.control_seq``), the command's id, when the log
  stored it and when this instance applied it;
* **where**: one KV entry ``$KV.ro_acks.<service>.<instance>`` (events/acks.py), put
  with a per-message TTL of ten times ``ack_ttl_s``, so a crashed instance disappears
  without anyone cleaning up; a closed client purges its entry at once.

Cost: one small message per instance per change (changes that arrive together go out
as one report) plus one heartbeat every ``ack_ttl_s / 3`` seconds; nothing on the hot
path of ``assign()``. Readers count an instance whose latest report is older than
``ack_ttl_s`` as stale (engine/api/propagation.py).

The client calls :meth:`AckReporter.start` once it has read the control log to its end,
:meth:`AckReporter.observe` after folding each live control message,
:meth:`AckReporter.caught_up` when a re-subscription (after a reconnect) has read the
log to its end again, and :meth:`AckReporter.close` before it disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from rollout_engine.consumers.folding import events_of
from rollout_engine.events import LogMessage, subjects
from rollout_engine.events.acks import AppliedRevision, InstanceAck, encode_ack

__all__ = ["FORGET_FACTOR", "AckReporter", "instance_id", "sdk_version"]

log = logging.getLogger(__name__)

FORGET_FACTOR = 10
"""The server forgets an instance's entry this many TTLs after its last report: long
enough for ``rollout status`` to show a crashed instance as stale, then gone."""
HEARTBEATS_PER_TTL = 3
PUBLISH_TIMEOUT_S = 2.0
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


def sdk_version() -> str:
    """The installed rollout-engine version (what the instance reports)."""
    try:
        return importlib.metadata.version("rollout-engine")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def instance_id(host: str | None = None, pid: int | None = None) -> str:
    """A fresh instance id: ``<host>-<pid>-<24 random bits>``, a subject token.

    The host's first label (the pod name on Kubernetes) and the pid say where to look;
    the random part keeps two clients of one process, or a restarted process with a
    recycled pid, apart.
    """
    name = _NOT_TOKEN.sub("-", (host or socket.gethostname()).split(".")[0]).strip("-")[:40] or "host"
    return f"{name}-{os.getpid() if pid is None else pid}-{secrets.token_hex(3)}"


class AckReporter:
    """Keeps and publishes this instance's :class:`InstanceAck` (see the module doc).

    Args:
        client: the RolloutClient (its ``settings``, ``producer`` and ``control_seq``).
        jetstream: returns the connected JetStream context, or None while offline.
    """

    def __init__(self, client: Any, jetstream: Callable[[], JetStreamContext | None]) -> None:
        self.ttl_s = float(client.settings.ack_ttl_s)
        self.enabled = self.ttl_s > 0
        self.service: str = client.producer
        self.host = socket.gethostname()[:256]
        self.instance = instance_id(self.host)
        self.subject = subjects.ack_subject(self.service, self.instance)
        self.started_ms = time.time_ns() // 1_000_000
        self.reports = 0
        self._client = client
        self._jetstream = jetstream
        self._applied: dict[str, AppliedRevision] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Future[None] | None = None
        self._closing = False
        self._warned = False

    # --- what the client calls ---------------------------------------------------------
    def start(self) -> None:
        """Begin reporting: the control log has been read to its end (idempotent)."""
        if not self.enabled or self._task is not None:
            return
        self._wake = asyncio.Event()
        self._resync()
        self._task = asyncio.ensure_future(self._run())
        log.info("rollout SDK: acknowledging control revisions as %s/%s (stale after %gs)",
                 self.service, self.instance, self.ttl_s)

    def observe(self, msg: Any) -> None:
        """After the client folded one live control message: note a state it applied."""
        if self._wake is None:
            return  # still catching up at start-up: start() takes the state as read
        try:
            meta = msg.metadata
            seq = int(meta.sequence.stream)
            rollout = subjects.parse(msg.subject).rollout
        except Exception:
            return
        if rollout is None or self._client.control_seq(rollout) != seq:
            return  # not a state change (an escalation, a re-check...) or an older command
        known = self._applied.get(rollout)
        if known is not None and known.revision >= seq:
            return  # re-delivered after a reconnect: applied earlier, keep that time
        applied_us = time.time_ns() // 1000
        stamp = getattr(meta, "timestamp", None)
        published_us = int(stamp.timestamp() * 1_000_000) if stamp is not None else 0
        events = events_of(LogMessage(seq, msg.subject, msg.data))
        command = events[-1].id if events else ""
        self._applied[rollout] = AppliedRevision(seq, command[:64], published_us, applied_us)
        self._wake.set()

    def caught_up(self) -> None:
        """The client (re)read the control log to its end and adopted the states: report
        what moved meanwhile now (after a reconnect), not at the next heartbeat."""
        if self._wake is None:
            return  # the first catch-up: start() follows
        self._resync()
        self._wake.set()

    async def close(self) -> None:
        """Stop reporting and purge this instance's entry (a clean exit leaves no stale line)."""
        task, self._task = self._task, None
        if task is None:
            return
        # The flag and the wake as well as the cancel: a cancel that lands while an
        # asyncio.wait_for inside nats-py completes is dropped by Python 3.11, and the
        # loop would go on forever.
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        js = self._jetstream()
        if js is None:
            return
        with contextlib.suppress(Exception):
            await js.publish(self.subject, b"", timeout=1.0, msg_ttl=self._forget_s(),
                             headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"})

    # --- the report ----------------------------------------------------------------------
    def record(self) -> InstanceAck:
        """This instance's report as it would be published now."""
        return InstanceAck(
            service=self.service, instance=self.instance, host=self.host, pid=os.getpid(),
            sdk_version=_VERSION, started_ms=self.started_ms, reported_ms=time.time_ns() // 1_000_000,
            ttl_ms=max(1, round(self.ttl_s * 1000)), rollouts=dict(self._applied),
        )

    def _resync(self) -> None:
        """Take revisions the client adopted without a message this reporter saw (the
        catch-up at start-up or after a reconnect): applied now, no latency measured."""
        now_us = time.time_ns() // 1000
        for rollout, seq in list(_revisions(self._client).items()):
            known = self._applied.get(rollout)
            if known is None or known.revision < seq:
                self._applied[rollout] = AppliedRevision(seq, "", 0, now_us)

    def _forget_s(self) -> int:
        return max(1, round(self.ttl_s * FORGET_FACTOR))

    async def _run(self) -> None:
        assert self._wake is not None
        heartbeat = self.ttl_s / HEARTBEATS_PER_TTL
        while not self._closing:
            await self._publish()
            if self._closing:
                return
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # arrives as the wake is set (a kill, then close() at once).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(heartbeat):
                    await self._wake.wait()
            self._wake.clear()
            self._resync()

    async def _publish(self) -> None:
        js = self._jetstream()
        if js is None:
            return  # offline: readers see this instance go stale, which it is
        try:
            await js.publish(self.subject, encode_ack(self.record()), timeout=PUBLISH_TIMEOUT_S,
                             msg_ttl=self._forget_s())
            self.reports += 1
        except NoStreamResponseError:
            self._warn_once(f"KV bucket {subjects.ACK_BUCKET} does not exist: the engine was provisioned by an "
                            "older version; `rollout up` (or its provisioning) creates it")
        except Exception as exc:
            self._warn_once(f"acknowledgement to {self.subject} failed ({type(exc).__name__}: {exc}); does this "
                            "credential allow it (the app role does, docs/security.md)? Retrying at each heartbeat")

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("rollout SDK: %s", message)


_VERSION = sdk_version()


def _revisions(client: Any) -> dict[str, int]:
    """The client's control revision per rollout (its control follower's ``control_seq`` table)."""
    return client.control.revisions()
