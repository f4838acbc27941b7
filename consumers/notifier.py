"""The notifier's fold: which control commands still owe which webhook a delivery.

Every kill switch, resume and armed escalation in the log becomes a delivery *intent*,
kept with the command's bytes for ``NOTIFY_WINDOW_MS`` of event time. The outcome of
each HTTP attempt comes back through the log as a :class:`events.Notification`
(``delivered``, ``failed`` with its attempt number, ``dead`` after the retry bound),
published by the edge that does the HTTP (``engine/stack/webhooks.py``), and is folded
into the intent per webhook name. So the state is a pure fold of the log, independent
of which webhooks are configured (a replay gives the same bytes), and a notifier killed
at any point resumes from its checkpoint knowing what was delivered and how many
attempts each failing webhook already had.

The reducer reads no clock and does no I/O: time is the newest tick or command time it
has folded (its event clock, ``consumers.eventtime``). An intent older than the window is forgotten, and so is a command that
arrives (again, past JetStream's duplicate window) more than the window after its own
time; within the window a repeated command id is the same intent, so it is never
notified twice.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.events import (
    AnyEvent,
    Escalation,
    Event,
    KillSwitch,
    Notification,
    Resume,
    Tick,
    encode,
    kind_of,
)

__all__ = ["NOTIFIED_KINDS", "NOTIFY_WINDOW_MS", "Attempts", "Intent", "Intents", "NotifierProjection"]

NOTIFY_WINDOW_MS = 6 * 3600 * 1000
"""How long (event time) an intent is kept: longer than any retry schedule the settings allow."""
NOTIFIED_KINDS = ("kill_switch", "resume", "escalation")


class Attempts(msgspec.Struct, array_like=True, gc=False):
    """One webhook's deliveries of one command: attempts so far, the last one's time, and
    its final status (``""`` while it is still owed, ``delivered`` or ``dead``)."""

    attempts: int = 0
    last_ms: int = 0
    final: str = ""


class Intent(msgspec.Struct, array_like=True, gc=False):
    """A command to notify: where it is in the log, what it is, and per webhook where it stands."""

    command_id: str
    seq: int
    rollout: str
    kind: str
    time_ms: int
    data: bytes
    targets: dict[str, Attempts] = msgspec.field(default_factory=dict)


class Intents(msgspec.Struct, array_like=True, gc=False):
    """One rollout's intents, by command id (insertion order: log order)."""

    intents: dict[str, Intent] = msgspec.field(default_factory=dict)


class NotifierProjection(RolloutProjection[Intents]):
    """Delivery intents of kill switches, resumes and armed escalations; emits nothing.

    One snapshot part per rollout (its intents), the event clock as the meta part: *now*
    is the newest tick or notified command time.
    """

    name = "notifier"
    state_type = Intents
    clock_is_meta = True
    reads_events = False  # commands, escalations and ticks only: no seen set of producer event ids

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        if isinstance(event, Tick):
            self._advance(event)
        elif isinstance(event, KillSwitch | Resume) or (isinstance(event, Escalation) and event.state == "armed"):
            self._advance(event)
            state = self.rollouts.get(event.rollout)
            known = state is not None and event.id in state.intents
            if not known and event.time_ms >= self.clock.now_ms - NOTIFY_WINDOW_MS:
                if state is None:
                    state = self.rollouts[event.rollout] = Intents()
                state.intents[event.id] = Intent(event.id, seq, event.rollout, kind_of(event), event.time_ms,
                                                 encode(event))
                self.touch(event.rollout)
        elif isinstance(event, Notification):
            self._record(event)
        return []

    @property
    def now_ms(self) -> int:
        return self.clock.now_ms

    @property
    def intents(self) -> dict[str, Intent]:
        """Every rollout's intents, by command id."""
        return {key: intent for state in self.rollouts.values() for key, intent in state.intents.items()}

    def _advance(self, event: AnyEvent) -> None:
        if not self.advance(event):
            return
        horizon = self.clock.now_ms - NOTIFY_WINDOW_MS
        for rollout, state in self.rollouts.items():
            gone = [key for key, intent in state.intents.items() if intent.time_ms < horizon]
            for key in gone:
                del state.intents[key]
            if gone:
                self.touch(rollout)

    def _record(self, event: Notification) -> None:
        state = self.rollouts.get(event.rollout)
        intent = state.intents.get(event.command_id) if state is not None else None
        if intent is None:
            return  # forgotten (past the window) or never ours
        attempts = intent.targets.setdefault(event.target, Attempts())
        if attempts.final:
            return  # a repeat of a final record changes nothing
        attempts.attempts = max(attempts.attempts, event.attempt)
        attempts.last_ms = max(attempts.last_ms, event.time_ms)
        if event.status != "failed":
            attempts.final = event.status
        intent.targets = dict(sorted(intent.targets.items()))  # canonical: targets in name order
        self.touch(event.rollout)

    # --- reads for the edge -------------------------------------------------------------
    def owed(self, target: str, kinds: frozenset[str] | None = None) -> list[Intent]:
        """Intents that still owe ``target`` a delivery, oldest first (log order)."""
        return sorted((i for i in self.intents.values()
                       if not i.targets.get(target, Attempts()).final and (kinds is None or i.kind in kinds)),
                      key=lambda i: i.seq)
