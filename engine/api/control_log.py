"""Reading the log for operators: a rollout's control state, and message ranges.

Every control command (KillSwitch, Resume, ConfigChange) carries the state after it, so
a rollout's current :class:`ControlState` is the ``after`` of its latest command in the
log: three ``last message by subject`` look-ups, no fold over history and no second
source of truth (the KV bucket is a cache for services; the API reads the log).

:func:`read_messages` streams a range of the log (by sequence, by store time, by
subject filters) through an ephemeral pull consumer; export, replay ``--stream``,
``rollout events`` and the API's on-demand evaluation all read through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from rollout_engine.events import AnyEvent, ControlState, decode_from_log, subjects

__all__ = [
    "ControlView",
    "LogMessage",
    "known_rollouts",
    "read_control",
    "read_messages",
    "read_policy_document",
    "rollout_subjects",
]

log = logging.getLogger(__name__)

STATE_COMMANDS = ("kill_switch", "resume", "config")


@dataclass(frozen=True, slots=True)
class LogMessage:
    """One message of the log: its stream sequence, subject, payload and store time."""

    seq: int
    subject: str
    data: bytes
    time_ms: int

    def events(self) -> list[AnyEvent]:
        """The good events of the message (bad items are the consumers' dead letters)."""
        return decode_from_log(self.subject, self.data)[0]


@dataclass(frozen=True, slots=True)
class ControlView:
    """A rollout's control state as the log defines it, and where it came from.

    ``command`` is the latest state-changing command (None: the rollout was never
    configured, so the default state applies); ``control_seq`` is the sequence of the
    latest message on any ``ro.ctl.<rollout>.*`` subject (the optimistic-concurrency
    token for the next change).
    """

    rollout: str
    state: ControlState
    command: AnyEvent | None
    command_seq: int
    control_seq: int


async def _last(js: JetStreamContext, subject: str) -> tuple[int, bytes, str] | None:
    try:
        msg = await js.get_last_msg(subjects.LOG_STREAM, subject)
    except NotFoundError:
        if subject.endswith(">"):
            return None
        # A partitioned log stores the subject with its partition appended (docs/scaling.md).
        try:
            msg = await js.get_last_msg(subjects.LOG_STREAM, f"{subject}.*")
        except NotFoundError:
            return None
    return int(msg.seq or 0), bytes(msg.data or b""), msg.subject or subject


async def read_control(js: JetStreamContext, rollout: str) -> ControlView:
    """The rollout's current control state: the ``after`` of its latest command."""
    found = await asyncio.gather(*(_last(js, subjects.control(rollout, c)) for c in STATE_COMMANDS))
    latest = max((f for f in found if f is not None), default=None, key=lambda f: f[0])
    any_ctl = await _last(js, subjects.log_filter(rollout, "ctl"))
    control_seq = any_ctl[0] if any_ctl else 0
    if latest is None:
        return ControlView(rollout, ControlState(), None, 0, control_seq)
    events = decode_from_log(latest[2], latest[1])[0]  # a forged body on the subject is ignored
    command = events[-1] if events else None
    state = getattr(command, "after", None)
    if not isinstance(state, ControlState):
        return ControlView(rollout, ControlState(), None, 0, control_seq)
    return ControlView(rollout, state, command, latest[0], control_seq)


async def read_policy_document(js: JetStreamContext, rollout: str) -> tuple[dict[str, Any] | None, int]:
    """The live policy document in force and its version: the newest policy carried by
    the rollout's ``config`` commands that is not a dry run. ``(None, 0)``: no policy in
    the log, the built-in default applies.

    The latest command alone does not say it (a kill after a policy change carries no
    policy), so this reads the rollout's config commands, a few per rollout.
    """
    subject = subjects.control(rollout, "config")
    found: tuple[dict[str, Any] | None, int] = (None, 0)
    async for msg in read_messages(js, [subject, f"{subject}.*"]):
        for event in msg.events():
            policy = getattr(event, "policy", None)
            if isinstance(policy, dict) and not policy.get("dry_run", False):
                found = (policy, event.after.policy_version)  # type: ignore[union-attr]
    return found


def rollout_subjects(rollout: str) -> list[str]:
    """Every log subject of one rollout: its producer events and its control subjects."""
    return [subjects.log_filter(rollout, "evt"), subjects.log_filter(rollout, "ctl")]


async def known_rollouts(js: JetStreamContext, rollout: str | None = None) -> dict[str, dict[str, int]]:
    """Rollouts present in the log, with message counts per subject kind.

    With ``rollout`` only that one is looked up (an empty result means unknown).
    """
    token = "*" if rollout is None else rollout
    found: dict[str, dict[str, int]] = {}
    for pattern in (f"{subjects.ROOT}.evt.{token}.>", f"{subjects.ROOT}.ctl.{token}.>"):
        try:
            info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=pattern)
        except NotFoundError:
            return {}
        for subject, count in (info.state.subjects or {}).items():
            try:
                parsed = subjects.parse(subject)
            except ValueError:  # stored before the log captured exact depths: never folded
                log.warning("log subject %r does not parse (%d messages); skipped", subject, count)
                continue
            if parsed.rollout is None or parsed.kind is None:
                continue
            found.setdefault(parsed.rollout, {})[parsed.kind] = int(count)
    return dict(sorted(found.items()))


def _to_datetime(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC)


async def read_messages(
    js: JetStreamContext,
    filters: Sequence[str] | None = None,
    *,
    start_seq: int = 0,
    since_ms: int | None = None,
    until_ms: int | None = None,
    follow: bool = False,
    batch: int = 1000,
) -> AsyncIterator[LogMessage]:
    """Yield log messages in stream order from an ephemeral pull consumer.

    Without ``follow`` it stops at the end of the log as it was when called; with it,
    it waits for new messages until cancelled. ``since_ms``/``until_ms`` compare the
    messages' store time (when JetStream accepted them).
    """
    if start_seq > 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    elif since_ms is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                opt_start_time=_to_datetime(since_ms))
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    config.ack_policy = AckPolicy.NONE
    config.inactive_threshold = 60.0
    config.max_ack_pending = -1
    flt = list(filters or [])
    if len(flt) == 1:
        config.filter_subject = flt[0]
    elif flt:
        config.filter_subjects = flt
    info = await js.add_consumer(subjects.LOG_STREAM, config)
    sub = await js.pull_subscribe_bind(consumer=info.name, stream=subjects.LOG_STREAM)
    try:
        remaining = int(info.num_pending or 0)
        while follow or remaining > 0:
            try:
                msgs = await sub.fetch(batch, timeout=1.0 if follow else 5.0)
            except TimeoutError:
                if follow:
                    continue
                break
            for msg in msgs:
                meta = msg.metadata
                remaining = int(meta.num_pending)
                stamp = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else 0
                if until_ms is not None and stamp > until_ms:
                    return
                if since_ms is not None and stamp < since_ms:
                    continue  # the server's start time is a hint; the filter is exact
                yield LogMessage(int(meta.sequence.stream), msg.subject, bytes(msg.data), stamp)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(subjects.LOG_STREAM, info.name)
