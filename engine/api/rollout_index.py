"""Every rollout in the log, sorted by name, with its control state: what a page of
``status`` reads, so a page costs the same with 100 rollouts or 100,000.

Before it, the overview asked the server for every subject of the log with its count
(one ``STREAM.INFO`` listing all of them) and then read each rollout's control state
(four ``last message by subject`` look-ups per rollout): 22 s and a 3.56 MB reply for
20,000 rollouts, and past 47,000 a reply over the server's 8 MiB ``max_payload``.

:class:`RolloutIndex` is the pure part: a sorted list of names, each rollout's latest
control state (the ``after`` of its newest KillSwitch, Resume or ConfigChange, the same
rule as ``engine.api.control_log.read_control``) and the count of rollouts per phase
(``events.transitions.phase``). :meth:`RolloutIndex.page` walks the sorted names from
the cursor and stops after ``limit`` matches, so the first page reads 100 entries, not
100,000.

:class:`LiveIndex` keeps one up to date from the log with two ordered consumers, each
delivering the last message of every subject and then every new one:

* ``ro.ctl.>`` with bodies: control commands are few (a handful per rollout);
* ``ro.evt.>`` headers only: a rollout that has events but no command yet is listed
  too (idle, default state), and the API never decodes an event batch.

Building it at 100,000 rollouts takes seconds at start-up (docs/scaling.md): requests
wait for it;
afterwards each request first checks that both consumers have delivered everything
the log held when it arrived (:meth:`LiveIndex.sync`, two ``CONSUMER.INFO`` requests),
so a rollout created just before ``rollout status`` is listed, whichever API instance
answers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.api.control_log import STATE_COMMANDS
from rollout_engine.engine.sdk.follower import fresh_name_on_reset
from rollout_engine.events import ControlState, LogMessage, subjects, transitions

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "LiveIndex", "Page", "RolloutIndex"]

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
"""Rollouts per page when the request names no ``limit``: a screen's worth, a few KB."""
MAX_LIMIT = 1000
"""Largest page: about 180 KB of JSON, far below the 1 MiB default ``max_payload`` of a NATS server."""
READER_INACTIVE_S = 30.0
"""A consumer of an API instance that died is removed by the server after this long."""
_SYNC_TIMEOUT_S = 10.0
_BUILD_TIMEOUT_S = 300.0
"""The first read of the log: about 10 s at 100,000 rollouts on 2 busy cores (docs/scaling.md)."""
_DEFAULT = ControlState()


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the listing: the rollouts on it and where the next one starts."""

    items: list[tuple[str, ControlState]]
    next_cursor: str | None


@dataclass
class RolloutIndex:
    """Names in order and each rollout's newest control state; no I/O."""

    names: list[str] = field(default_factory=list)
    states: dict[str, tuple[int, ControlState]] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    building: bool = False
    """While the log is first read, names are appended and sorted once by :meth:`built`:
    100,000 sorted inserts would move 5 billion list slots."""
    _known: set[str] = field(default_factory=set)

    def add(self, rollout: str) -> None:
        """Note a rollout seen on any subject (idle until a command says otherwise)."""
        if rollout in self._known or rollout.startswith("_"):  # "_" names are the engine's own
            return
        self._known.add(rollout)
        if self.building:
            self.names.append(rollout)
        else:
            bisect.insort(self.names, rollout)
        self.phases["idle"] += 1

    def built(self) -> None:
        """End of the first read: sort the names, insert in order from now on."""
        self.names.sort()
        self.building = False

    def apply(self, seq: int, state: ControlState, rollout: str) -> None:
        """Fold the state a command at stream sequence ``seq`` left; an older one changes nothing."""
        self.add(rollout)
        if rollout not in self._known:
            return
        old_seq, old = self.states.get(rollout, (0, _DEFAULT))
        if seq <= old_seq:
            return
        self.states[rollout] = (seq, state)
        self.phases[transitions.phase(old)] -= 1
        self.phases[transitions.phase(state)] += 1

    def state_of(self, rollout: str) -> ControlState:
        return self.states.get(rollout, (0, _DEFAULT))[1]

    def page(self, limit: int, cursor: str | None = None, phase: str | None = None, prefix: str = "") -> Page:
        """Up to ``limit`` rollouts after ``cursor`` (by name) whose name starts with ``prefix``
        and whose phase is ``phase``; ``next_cursor`` is None when no match is left after them."""
        names = self.names
        start = bisect.bisect_left(names, prefix) if prefix else 0
        if cursor is not None:
            start = max(start, bisect.bisect_right(names, cursor))
        items: list[tuple[str, ControlState]] = []
        for i in range(start, len(names)):
            name = names[i]
            if prefix and not name.startswith(prefix):
                break
            state = self.state_of(name)
            if phase is not None and transitions.phase(state) != phase:
                continue
            if len(items) == limit:  # one more match exists: there is a next page
                return Page(items, items[-1][0])
            items.append((name, state))
        return Page(items, None)


class LiveIndex:
    """A :class:`RolloutIndex` kept current from the log (see the module docstring)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.index = RolloutIndex()
        self.built_s = 0.0
        self._subs: list[Any] = []
        self._seen: dict[str, tuple[str, int]] = {}
        """Per family, the consumer and its delivery sequence of the last message folded."""
        self._ready: asyncio.Task[None] | None = None

    async def ready(self) -> RolloutIndex:
        """The index, current as of this call (built at the first call; again after a failed build)."""
        if self._ready is None or (self._ready.done() and (self._ready.cancelled() or self._ready.exception())):
            await self.close()
            self.index, self._seen = RolloutIndex(building=True), {}
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)
        await self.sync()
        return self.index

    async def _start(self) -> None:
        started = time.perf_counter()
        for family, filter_subject, headers_only in (("ctl", subjects.CONTROL_ALL, False),
                                                     ("evt", subjects.EVENTS_ALL, True)):
            sub = await self.js.subscribe(
                filter_subject, stream=subjects.LOG_STREAM, cb=self._handler(family), ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=2.0, headers_only=headers_only,
                config=ConsumerConfig(name=_name(family), inactive_threshold=READER_INACTIVE_S),
            )
            fresh_name_on_reset(sub, lambda family=family: _name(family))  # type: ignore[misc]
            self._subs.append((family, sub))
        await self.sync(_BUILD_TIMEOUT_S)
        self.index.built()
        self.built_s = time.perf_counter() - started
        log.info("rollout index: %d rollouts read from the log in %.2f s", len(self.index.names), self.built_s)

    def _handler(self, family: str) -> Any:
        index, seen, commands = self.index, self._seen, frozenset(STATE_COMMANDS)

        async def on_message(msg: Msg) -> None:
            meta = msg.metadata
            seq = meta.sequence.stream
            seen[family] = (meta.consumer, meta.sequence.consumer)
            parts = msg.subject.split(".")
            if len(parts) < 4:  # a subject the log keeps but nothing parses: skipped
                return
            rollout = parts[2]
            if family == "evt":
                index.add(rollout)
                return
            if parts[3] not in commands:
                index.add(rollout)
                return
            for event in events_of(LogMessage(seq, msg.subject, bytes(msg.data or b""))):
                state = getattr(event, "after", None)
                if isinstance(state, ControlState) and event.rollout == rollout:
                    index.apply(seq, state, rollout)

        return on_message

    async def sync(self, timeout: float = _SYNC_TIMEOUT_S) -> None:
        """Wait until both consumers have delivered, and this process folded, everything
        the log held at this call."""
        deadline, pause = time.monotonic() + timeout, 0.002
        for family, sub in self._subs:
            while True:
                try:
                    info = await self.js.consumer_info(subjects.LOG_STREAM, sub._consumer,  # renamed on a reset
                                                       timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                except NatsTimeout:  # the reply queues behind the deliveries of a first read: ask again
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the rollout index did not catch up with the log within {timeout:g} s "
                                           "(no consumer info)") from None
                    continue
                # Delivered counts messages (its stream_seq also moves past subjects the filter skips,
                # e.g. ticks): caught up when this process folded the last one the consumer sent.
                sent = info.delivered.consumer_seq or 0
                consumer, folded = self._seen.get(family, ("", 0))
                if info.num_pending == 0 and (sent == 0 or (consumer == info.name and folded >= sent)):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the rollout index did not catch up with the log within {timeout:g} s "
                                       f"({info.num_pending} {family} subjects pending)")
                await asyncio.sleep(pause)
                pause = min(0.1, pause * 2)  # a few ms for a request; no busy polling during a build

    async def close(self) -> None:
        """Remove the consumers (they would expire after ``READER_INACTIVE_S`` anyway)."""
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        for _family, sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


def _name(family: str) -> str:
    return f"api-index-{family}-{secrets.token_hex(6)}"
