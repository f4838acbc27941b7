"""Who applied what: the SDK instances following a rollout and the revision each applied.

Every ``RolloutClient`` keeps one acknowledgement in the KV bucket ``ro_acks``
(engine/sdk/acks.py, events/acks.py). This module reads them and answers the on-call
question after a kill switch: has every live instance applied it, how fast, and which
one has not?

* :func:`read_acks` takes the bucket as it is now (one ordered consumer delivering the
  last report per instance), :func:`watch_acks` the same and then every new report.
* :func:`judge` (pure, no I/O) classifies each instance against a rollout's revision:
  ``applied`` (its revision is this one or newer), ``lagging`` (live, older revision)
  or ``stale`` (no report within its TTL, by the server's store time; not counted as
  following, so a crashed instance cannot hold a wait forever).
* :func:`propagation_of` is what ``rollout status`` shows; :func:`wait_applied` returns
  once every live instance has applied a revision (``rollout wait --applied``).

The latency of an instance is from the log storing the command (server clock) to the
instance applying it (instance clock); on different hosts it relies on synchronised
clocks (NTP), and a negative difference counts as 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.events import EventError, kind_of, subjects
from rollout_engine.events.acks import InstanceAck, decode_ack

__all__ = [
    "AckEntry",
    "InstanceState",
    "Propagation",
    "judge",
    "propagation_of",
    "read_acks",
    "status_section",
    "wait_applied",
    "watch_acks",
]

log = logging.getLogger(__name__)

Status = Literal["applied", "lagging", "stale"]
MAX_LISTED = 2000
"""Instances a status reply lists (lagging and stale first); the counts cover all."""
READER_INACTIVE_S = 10.0
RECHECK_S = 0.25
"""How often a wait re-judges without news: an instance turns stale by time alone."""


@dataclass(frozen=True, slots=True)
class AckEntry:
    """An instance's latest report as the server stored it (``ack`` None: unreadable)."""

    service: str
    instance: str
    stored_ms: int
    ack: InstanceAck | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One instance judged against a rollout's revision."""

    service: str
    instance: str
    host: str
    pid: int
    sdk_version: str
    status: Status
    revision: int
    command_id: str
    latency_ms: float | None
    applied_ms: int | None
    last_seen_ms: int
    ttl_ms: int

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {
            "service": self.service, "instance": self.instance, "host": self.host, "pid": self.pid,
            "sdk_version": self.sdk_version, "status": self.status, "revision": self.revision,
            "command_id": self.command_id, "latency_ms": self.latency_ms, "applied_ms": self.applied_ms,
            "last_seen_ms": self.last_seen_ms, "seen_s_ago": round(max(0, now_ms - self.last_seen_ms) / 1000, 3),
            "ttl_ms": self.ttl_ms,
        }


@dataclass(frozen=True, slots=True)
class Propagation:
    """A rollout's revision and how far it got through the live instances."""

    rollout: str
    revision: int
    command: str
    command_id: str
    now_ms: int
    instances: tuple[InstanceState, ...] = ()
    unreadable: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def following(self) -> int:
        """Live instances (each follows every rollout's control subjects)."""
        return self.counts.get("applied", 0) + self.counts.get("lagging", 0)

    @property
    def applied(self) -> int:
        return self.counts.get("applied", 0)

    @property
    def lagging(self) -> int:
        return self.counts.get("lagging", 0)

    @property
    def stale(self) -> int:
        return self.counts.get("stale", 0)

    @property
    def complete(self) -> bool:
        """Every live instance has applied the revision (true with no live instance)."""
        return self.lagging == 0

    @property
    def slowest_ms(self) -> float | None:
        """Largest measured latency among live instances that applied this very revision."""
        found = [i.latency_ms for i in self.instances
                 if i.status == "applied" and i.revision == self.revision and i.latency_ms is not None]
        return max(found) if found else None

    def summary(self) -> str:
        """``applied by 47 of 47 instances, slowest 3.2 ms`` (and who lags, who is stale)."""
        if not self.following:
            text = "no live SDK instance follows it"
        else:
            noun = "instance" if self.following == 1 else "instances"
            text = f"applied by {self.applied} of {self.following} {noun}"
            slowest = self.slowest_ms
            if slowest is not None:
                text += f", slowest {slowest:.1f} ms"
            elif self.applied:
                text += " (read at start-up, no propagation measured)"
            if self.lagging:
                late = [f"{i.service}/{i.instance}" for i in self.instances if i.status == "lagging"]
                text += f"; lagging: {', '.join(late[:5])}{' ...' if len(late) > 5 else ''}"
        if self.stale:
            text += f"; {self.stale} stale"
        return text

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.instances, key=_display_order)
        return {
            "rollout": self.rollout, "revision": self.revision, "command": self.command,
            "command_id": self.command_id, "following": self.following, "applied": self.applied,
            "lagging": self.lagging, "stale": self.stale, "unreadable": self.unreadable,
            "complete": self.complete, "slowest_ms": self.slowest_ms, "summary": self.summary(),
            "instances": [i.to_json(self.now_ms) for i in ordered[:MAX_LISTED]],
            "instances_not_listed": max(0, len(ordered) - MAX_LISTED),
        }


def _display_order(state: InstanceState) -> tuple[int, float, str, str]:
    rank = {"lagging": 0, "stale": 1, "applied": 2}[state.status]
    return rank, -(state.latency_ms or 0.0), state.service, state.instance


def judge(rollout: str, revision: int, entries: Iterable[AckEntry], now_ms: int, *,
          command: str = "", command_id: str = "") -> Propagation:
    """Classify every reported instance against ``revision`` of ``rollout`` (pure)."""
    states: list[InstanceState] = []
    counts = {"applied": 0, "lagging": 0, "stale": 0}
    unreadable = 0
    for entry in entries:
        ack = entry.ack
        if ack is None:
            unreadable += 1
            continue
        mine = ack.rollouts.get(rollout)
        have = mine.revision if mine is not None else 0
        status: Status
        if now_ms - entry.stored_ms > ack.ttl_ms:
            status = "stale"
        else:
            status = "applied" if have >= revision else "lagging"
        counts[status] += 1
        latency_us = mine.latency_us if mine is not None else None
        states.append(InstanceState(
            service=entry.service, instance=entry.instance, host=ack.host, pid=ack.pid,
            sdk_version=ack.sdk_version, status=status, revision=have,
            command_id=mine.command_id if mine is not None else "",
            latency_ms=None if latency_us is None else round(latency_us / 1000, 3),
            applied_ms=mine.applied_us // 1000 if mine is not None and mine.applied_us else None,
            last_seen_ms=entry.stored_ms, ttl_ms=ack.ttl_ms,
        ))
    return Propagation(rollout, revision, command, command_id, now_ms, tuple(states), unreadable, counts)


# --- reading the bucket ----------------------------------------------------------------
def _entry(msg: Msg) -> AckEntry | None:
    """An AckEntry from a bucket message; None for a purge or delete (the instance left)."""
    try:
        service, instance = subjects.parse_ack_subject(msg.subject)
    except ValueError:
        return None
    if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
        return AckEntry(service, instance, 0, None, "gone")
    stamp = msg.metadata.timestamp
    stored_ms = int(stamp.timestamp() * 1000) if stamp is not None else 0
    try:
        return AckEntry(service, instance, stored_ms, decode_ack(bytes(msg.data), service, instance))
    except EventError as exc:
        return AckEntry(service, instance, stored_ms, None, str(exc))


@contextlib.asynccontextmanager
async def watch_acks(js: JetStreamContext) -> AsyncIterator[asyncio.Queue[AckEntry | None]]:
    """A queue of reports: the latest of each instance, then ``None`` (caught up), then live.

    A report with ``error == "gone"`` means the instance closed (its entry was purged).
    The reader is a named ordered consumer created through the filtered subject
    ``$JS.API.CONSUMER.CREATE.KV_ro_acks.<name>.$KV.ro_acks.>`` (the operator role may).
    """
    queue: asyncio.Queue[AckEntry | None] = asyncio.Queue()
    caught_up = False

    async def on_message(msg: Msg) -> None:
        nonlocal caught_up
        entry = _entry(msg)
        if entry is not None:
            queue.put_nowait(entry)
        if not caught_up and msg.metadata.num_pending == 0:
            caught_up = True
            queue.put_nowait(None)

    sub = await js.subscribe(
        subjects.ACKS_ALL, stream=subjects.ACK_STREAM, cb=on_message, ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=2.0,
        config=ConsumerConfig(name=f"acks-{secrets.token_hex(6)}", inactive_threshold=READER_INACTIVE_S),
    )
    try:
        info = await sub.consumer_info()
        if not caught_up and info.num_pending == 0 and info.delivered.consumer_seq == 0:
            caught_up = True
            queue.put_nowait(None)
        yield queue
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def read_acks(js: JetStreamContext, timeout: float = 5.0) -> list[AckEntry]:
    """Every instance's latest report, as the bucket holds them now."""
    found: dict[tuple[str, str], AckEntry] = {}
    async with watch_acks(js) as queue:
        async with asyncio.timeout(timeout):
            while (entry := await queue.get()) is not None:
                _keep(found, entry)
    return list(found.values())


def _keep(found: dict[tuple[str, str], AckEntry], entry: AckEntry) -> None:
    key = (entry.service, entry.instance)
    if entry.error == "gone":
        found.pop(key, None)
    else:
        found[key] = entry


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def propagation_of(js: JetStreamContext, rollout: str, revision: int, *, command: str = "",
                         command_id: str = "") -> Propagation:
    """The rollout's revision judged against every instance's latest report."""
    return judge(rollout, revision, await read_acks(js), _now_ms(), command=command, command_id=command_id)


async def wait_applied(js: JetStreamContext, rollout: str, revision: int, timeout: float | None = None, *,
                       command: str = "", command_id: str = "") -> Propagation:
    """Return once every live instance has applied ``revision`` of ``rollout``.

    Pushed, not polled: the bucket's reports arrive as instances publish them; the
    judgement is also re-run every ``RECHECK_S`` because an instance turns stale by time
    alone (a crashed one stops holding the wait after its TTL). With no live instance it
    returns at once (``following == 0``; the caller decides whether that is enough).
    On ``timeout`` it returns the last judgement, with ``complete`` False.
    """
    found: dict[tuple[str, str], AckEntry] = {}
    deadline = None if not timeout else time.monotonic() + timeout
    caught_up = False
    async with watch_acks(js) as queue:
        while True:
            while not queue.empty():
                entry = queue.get_nowait()
                if entry is None:
                    caught_up = True
                else:
                    _keep(found, entry)
            result = judge(rollout, revision, found.values(), _now_ms(), command=command, command_id=command_id)
            if caught_up and result.complete:
                return result
            left = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
            if left <= 0:
                return result
            try:
                async with asyncio.timeout(left):  # not wait_for: it can drop a cancel (Python 3.11)
                    entry = await queue.get()
            except TimeoutError:
                continue
            if entry is None:
                caught_up = True
            else:
                _keep(found, entry)


async def status_section(js: JetStreamContext, view: Any) -> dict[str, Any] | None:
    """The ``propagation`` section of ``rollout status`` for a ControlView (engine/api/control_log.py):
    the rollout's current revision against every instance. None when the bucket cannot be
    read (an engine provisioned before acknowledgements existed, or no permission)."""
    command = view.command
    try:
        result = await propagation_of(js, view.rollout, view.command_seq,
                                      command=kind_of(command) if command is not None else "",
                                      command_id=getattr(command, "id", ""))
    except Exception as exc:
        log.warning("acknowledgements of %s not readable: %s", view.rollout, exc)
        return None
    return result.to_json()
