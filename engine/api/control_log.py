"""Reading the log for operators: a rollout's control state and the rollouts it holds.

Every control command (``events.COMMAND_TYPES``: KillSwitch, Resume, ConfigChange)
carries the state after it, so a rollout's current :class:`ControlState` is the
``after`` of its latest command in the log: three ``last message by subject`` look-ups,
no fold over history and no second source of truth (the KV bucket is a cache for
services; the API reads the log). Ranges of the log are read with
``engine.logtools.reader.read_messages``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.events import (
    COMMAND_TYPES,
    AnyEvent,
    ControlState,
    LogMessage,
    kind_of,
    subjects,
)

__all__ = ["ControlView", "known_rollouts", "read_control", "read_policy_document"]

log = logging.getLogger(__name__)

STATE_COMMANDS = tuple(kind_of(command) for command in COMMAND_TYPES)
"""The control subjects whose latest message defines the state: kill_switch, resume, config."""


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


async def _last(js: JetStreamContext, subject: str) -> tuple[int, str, bytes] | None:
    try:
        msg = await js.get_last_msg(subjects.LOG_STREAM, subject)
    except NotFoundError:
        if subject.endswith(">"):
            return None
        # A partitioned log stores the subject with its partition appended (docs/scaling.md).
        try:
            msg = await js.get_last_msg(subjects.LOG_STREAM, subjects.partitioned(subject))
        except NotFoundError:
            return None
    return int(msg.seq or 0), msg.subject or subject, bytes(msg.data or b"")


async def read_control(js: JetStreamContext, rollout: str) -> ControlView:
    """The rollout's current control state: the ``after`` of its latest command."""
    found = await asyncio.gather(*(_last(js, subjects.control(rollout, c)) for c in STATE_COMMANDS))
    latest = max((f for f in found if f is not None), default=None, key=lambda f: f[0])
    any_ctl = await _last(js, subjects.log_filter(rollout, "ctl"))
    control_seq = any_ctl[0] if any_ctl else 0
    if latest is None:
        return ControlView(rollout, ControlState(), None, 0, control_seq)
    events = events_of(LogMessage(*latest))  # a forged body on the subject is ignored
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
    async for msg in read_messages(js, [subject, subjects.partitioned(subject)]):
        for event in events_of(msg):
            policy = getattr(event, "policy", None)
            if isinstance(policy, dict) and not policy.get("dry_run", False):
                found = (policy, event.after.policy_version)  # type: ignore[union-attr]
    return found


async def known_rollouts(js: JetStreamContext, rollout: str | None = None) -> dict[str, dict[str, int]]:
    """Rollouts present in the log, with message counts per subject kind.

    With ``rollout`` only that one is looked up (an empty result means unknown).
    """
    found: dict[str, dict[str, int]] = {}
    for pattern in subjects.rollout_filters(rollout):
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
