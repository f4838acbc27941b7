"""The SDK's control follower: the control state of every rollout, pushed from the log.

An ordered JetStream consumer on ``ro.ctl.>`` (deliver last per subject) is read up to
its end before :meth:`ControlFollower.follow` returns, then pushes every kill switch,
resume and config change as it is published. Each command carries the full state after
it, so the latest one per rollout is the state (``consumers.control.apply_command``, the
fold the control consumer runs; messages are read by ``consumers.folding.read_message``,
as every consumer reads them).

The follower is a *named* ephemeral consumer (``sdk-<producer>-<random>``), created
through the filtered create subject ``$JS.API.CONSUMER.CREATE.RO_LOG.<name>.ro.ctl.>``,
so the ``app`` role needs no unfiltered create (which could retarget the engine's
durables: docs/security.md). Every (re)subscription and every ordered-consumer reset
takes a fresh name; old ones expire after :data:`FOLLOWER_INACTIVE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.consumers.control import apply_command
from rollout_engine.consumers.folding import read_message
from rollout_engine.engine.bus import BusUnavailable
from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.assignment import Split, split_of
from rollout_engine.engine.sdk.signatures import ControlVerifier
from rollout_engine.events import ControlState, KillSwitch, LogMessage, encode_batch, subjects

__all__ = ["FOLLOWER_INACTIVE_S", "ControlFollower", "OnChange", "fresh_name_on_reset"]

log = logging.getLogger(__name__)

OnChange = Callable[[str, ControlState], Any]
FOLLOWER_INACTIVE_S = 10.0
"""A control follower the SDK left (reset, reconnect, exit) is deleted by the server after this."""
RESET_ATTEMPTS = 20
"""Tries to re-create a reset follower (backing off from 0.25 s to 5 s: about 80 s in all)."""
DEFAULT_STATE = ControlState()
DEFAULT_SPLIT = split_of(DEFAULT_STATE)


class ControlFollower:
    """Each rollout's control state and split, kept in step with the log.

    ``on_change(rollout, state)`` (sync or async) runs once per rollout with its current
    state when the log has been read at start (or after a reconnect, for the rollouts
    whose state moved meanwhile), then after each change; an awaitable it returns is
    handed to ``spawn`` (the client waits for those on close).

    Two hooks for the client's acknowledgements (``engine.sdk.acks``): ``after_fold(msg)``
    runs after each live control message is folded, ``after_catch_up()`` after the states
    read up to the end of the log are adopted.
    """

    def __init__(self, producer: str, *, on_change: OnChange | None, spawn: Callable[[Awaitable[Any]], None],
                 catch_up_timeout_s: float) -> None:
        self.producer = producer
        self.on_change = on_change
        self.spawn = spawn
        self.catch_up_timeout_s = catch_up_timeout_s
        self.states: dict[str, ControlState] = {}
        self.splits: dict[str, Split] = {}
        self._state_seq: dict[str, int] = {}
        self._generation = 0
        self._refollows = 0  # the latest refollow() wins; older retry loops end
        self._sub: Any = None
        self.after_fold: Callable[[Msg], None] | None = None
        self.after_catch_up: Callable[[], None] | None = None
        self.verifier: ControlVerifier | None = None
        self.refresh_keys: Callable[[], Awaitable[None]] | None = None

    def state(self, rollout: str) -> ControlState:
        """The rollout's current control state (the safe default before any command)."""
        return self.states.get(rollout, DEFAULT_STATE)

    def split(self, rollout: str) -> Split:
        return self.splits.get(rollout, DEFAULT_SPLIT)

    def control_seq(self, rollout: str) -> int:
        """Log sequence of the command that set :meth:`state` (0: no command seen yet)."""
        return self._state_seq.get(rollout, 0)

    def revisions(self) -> dict[str, int]:
        """:meth:`control_seq` of every rollout with a command (a copy)."""
        return dict(self._state_seq)

    async def follow(self, js: JetStreamContext, *, wait: bool) -> None:
        """(Re)subscribe; with ``wait``, return once the log's current state is read."""
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        caught_up = asyncio.Event()
        # A new subscription re-delivers the last command of every subject. Messages of
        # an older subscription are ignored from now on, and sequences start afresh (the
        # stream may have been recreated with new numbers).
        self._generation += 1
        generation = self._generation
        self._state_seq = {}
        # Until it has caught up, the subscription folds into a staging copy: the last
        # config, kill switch and resume of a rollout arrive one after the other, and
        # only the newest is the rollout's state. Folding them live would make every
        # new instance see (and report through on_change) a kill that was lifted long
        # ago, and would flip assign() on a reconnect.
        staging: dict[str, ControlState] = {}
        staging_seq: dict[str, int] = {}

        def finish_catch_up() -> None:
            if caught_up.is_set():
                return
            caught_up.set()
            self._adopt(staging, staging_seq)
            if self.after_catch_up is not None:
                self.after_catch_up()

        async def on_message(msg: Msg) -> None:
            if generation != self._generation:
                return
            meta = msg.metadata
            message = LogMessage(meta.sequence.stream, msg.subject, msg.data)
            refusal = await self._refusal(msg, message.seq)
            if refusal is not None:
                message = _stop_only(message, self.states if caught_up.is_set() else staging, refusal)  # type: ignore[assignment]
            if message is None:
                if not caught_up.is_set() and meta.num_pending == 0:
                    finish_catch_up()
                return
            if caught_up.is_set():
                self.fold(message)
                if self.after_fold is not None:
                    self.after_fold(msg)
                return
            _fold_into(staging, staging_seq, message)
            if meta.num_pending == 0:
                finish_catch_up()

        try:
            # A named consumer: nats-py creates it through the filtered create subject,
            # the only one the `app` role may use (engine/stack/security.py).
            self._sub = await js.subscribe(
                subjects.CONTROL_ALL,
                stream=subjects.LOG_STREAM,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=2.0,
                config=ConsumerConfig(name=self._name(), inactive_threshold=FOLLOWER_INACTIVE_S),
            )
            fresh_name_on_reset(self._sub, self._name)
            info = await self._sub.consumer_info()
        except Exception as exc:
            raise BusUnavailable(
                f"cannot follow control commands on stream {subjects.LOG_STREAM} ({exc}); "
                "has `rollout up` provisioned the streams?"
            ) from None
        if info.num_pending == 0 and info.delivered.consumer_seq == 0:
            finish_catch_up()
        if wait:
            try:
                await asyncio.wait_for(caught_up.wait(), self.catch_up_timeout_s)
            except TimeoutError:
                raise BusUnavailable(
                    f"control state not read within {self.catch_up_timeout_s}s "
                    f"({info.num_pending} commands pending); the server may be overloaded"
                ) from None

    async def refollow(self, js: JetStreamContext, first_delay_s: float = 0.25, max_delay_s: float = 5.0) -> None:
        """Follow again after a reconnect, retrying until it works.

        Right after a reconnect the request may time out: in a cluster that lost a node the
        stream and consumer leaders are being elected for a few seconds. A single attempt
        left the follower stopped until the next reconnect, so a kill switch published
        meanwhile was never applied. Retries back off from ``first_delay_s`` to
        ``max_delay_s``; a newer reconnect starts its own retries and this one ends.
        """
        self._refollows += 1
        mine, delay = self._refollows, first_delay_s
        while mine == self._refollows:
            try:
                await self.follow(js, wait=False)
                return
            except Exception as exc:
                log.warning("rollout SDK: could not follow control subjects (%s); retrying in %.2g s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)

    async def _refusal(self, msg: Msg, seq: int) -> str | None:
        """Why the message's signature does not let it be applied as sent (engine/sdk/signatures.py), or None.

        A refused message is never applied as sent, but a refused *kill switch* still stops
        the candidate (:func:`_stop_only`): stopping is always safe, and the engine's own
        readers of the log do not verify yet, so refusing it could leave this service on a
        candidate the engine believes killed (docs/security.md, 'Signed control commands').
        """
        if self.verifier is None:
            return None
        reason = self.verifier.check(msg.subject, msg.data, msg.headers)
        if reason == "unknown_key" and self.refresh_keys is not None:
            await self.refresh_keys()  # a rotation this instance has not seen yet
            reason = self.verifier.check(msg.subject, msg.data, msg.headers)
        if reason is None:
            return None
        m.CONTROL_REFUSED.labels(reason).inc()
        log.error("rollout SDK: REFUSED control message at seq %d on %s (%s): not applied as sent (a kill switch "
                  "only stops the candidate). Only the engine's signing key may issue control commands; a "
                  "credential allowed to publish on ro.ctl may be misused (docs/security.md, 'Signed control "
                  "commands')", seq, msg.subject, reason)
        return reason

    def _name(self) -> str:
        """A consumer name no one else uses: ``sdk-<producer>-<48 random bits>``."""
        return f"sdk-{self.producer}-{secrets.token_hex(6)}"

    def fold(self, message: LogMessage) -> None:
        """Fold one live control message: each change is applied and reported at once;
        never let an older command overwrite a newer state."""
        for event in _control_events(message):
            if message.seq <= self._state_seq.get(event.rollout, 0):
                continue
            new_state = apply_command(self.states, event)
            if new_state is None:
                continue
            self._state_seq[event.rollout] = message.seq
            self.splits[event.rollout] = split_of(new_state)
            self._notify(event.rollout, new_state)

    def _adopt(self, staging: dict[str, ControlState], staging_seq: dict[str, int]) -> None:
        """Take the states a subscription read up to the end of the log; report each
        rollout whose state differs from the one held (once, with its current state)."""
        for rollout, state in sorted(staging.items()):
            self._state_seq[rollout] = staging_seq[rollout]
            if self.states.get(rollout) == state:
                continue
            self.states[rollout] = state
            self.splits[rollout] = split_of(state)
            self._notify(rollout, state)

    def _notify(self, rollout: str, state: ControlState) -> None:
        if self.on_change is None:
            return
        try:
            result = self.on_change(rollout, state)
            if inspect.isawaitable(result):
                self.spawn(result)
        except Exception:
            log.exception("rollout SDK: on_change callback failed")


def _control_events(message: LogMessage) -> list[Any]:
    """The good events of a control message (read as every consumer reads the log); bad ones logged."""
    events, rejected = read_message(message)
    for bad in rejected:
        log.warning("rollout SDK: ignoring bad control message at seq %d: %s", message.seq, bad.reason)
    return events


def _stop_only(message: LogMessage, states: dict[str, ControlState], reason: str) -> LogMessage | None:
    """What an unverified message may still do: the kill switches in it stop the candidate,
    keeping everything else of the rollout's current state (names, versions); nothing else applies."""
    stops = []
    for event in _control_events(message):
        if isinstance(event, KillSwitch):
            current = states.get(event.rollout, DEFAULT_STATE)
            stops.append(msgspec.structs.replace(
                event, after=msgspec.structs.replace(current, kill_switch=True, canary_pct=0.0)))
            m.CONTROL_UNVERIFIED_STOPS.labels(reason).inc()
    return LogMessage(message.seq, message.subject, encode_batch(stops)) if stops else None


def _fold_into(states: dict[str, ControlState], seqs: dict[str, int], message: LogMessage) -> None:
    """Fold one message into ``states`` silently (catch-up): the newest command wins."""
    for event in _control_events(message):
        if message.seq > seqs.get(event.rollout, 0) and apply_command(states, event) is not None:
            seqs[event.rollout] = message.seq


def fresh_name_on_reset(sub: Any, fresh_name: Callable[[], str]) -> None:
    """Make nats-py re-create a reset ordered consumer under a new name.

    After a gap or missed heartbeats nats-py 2.16 re-creates an ordered consumer from
    its saved request, under the *same* name. The old consumer usually still exists, so
    the server takes the request as an update and refuses it ("deliver policy can not be
    updated"), and the follower would stop until the next reconnect. Renaming the saved
    request first makes the re-create a plain create (resuming after the last stream
    sequence seen), through the same filtered subject. The old consumer has no
    subscriber left and expires after ``FOLLOWER_INACTIVE_S``.
    """
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    recreate = getattr(jsi, "recreate_consumer", None)
    if jsi is None or recreate is None or not hasattr(jsi, "_ccreq"):
        log.warning("rollout SDK: this nats-py has no ordered-consumer reset hook; after a gap the "
                    "control follower resumes only at the next reconnect")
        return

    async def recreate_under_a_fresh_name() -> None:
        # Retried: during a cluster's leader election the create times out for a few
        # seconds, and a failed reset would leave the follower stopped until a reconnect.
        delay = 0.25
        for attempt in range(RESET_ATTEMPTS):
            jsi._ccreq.name = fresh_name()
            try:
                await recreate()
                return
            except Exception as exc:
                if attempt == RESET_ATTEMPTS - 1:
                    raise
                log.warning("rollout SDK: could not re-create the control follower (%s); retrying in %.2g s",
                            exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    jsi.recreate_consumer = recreate_under_a_fresh_name
