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
has folded. An intent older than the window is forgotten, and so is a command that
arrives (again, past JetStream's duplicate window) more than the window after its own
time; within the window a repeated command id is the same intent, so it is never
notified twice.
"""

from __future__ import annotations

import msgspec

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

__all__ = ["NOTIFIED_KINDS", "NOTIFY_WINDOW_MS", "Attempts", "Intent", "NotifierProjection"]

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


class _Snapshot(msgspec.Struct, array_like=True):
    now_ms: int
    intents: list[Intent]


_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoder = msgspec.msgpack.Decoder(_Snapshot)


class NotifierProjection:
    """Delivery intents of kill switches, resumes and armed escalations; emits nothing."""

    name = "notifier"

    def __init__(self) -> None:
        self.intents: dict[str, Intent] = {}
        self.now_ms = 0

    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        if isinstance(event, Tick):
            self._advance(event.time_ms)
        elif isinstance(event, KillSwitch | Resume) or (isinstance(event, Escalation) and event.state == "armed"):
            self._advance(event.time_ms)
            if event.id not in self.intents and event.time_ms >= self.now_ms - NOTIFY_WINDOW_MS:
                self.intents[event.id] = Intent(event.id, seq, event.rollout, kind_of(event), event.time_ms,
                                                encode(event))
        elif isinstance(event, Notification):
            self._record(event)
        return []

    def _advance(self, time_ms: int) -> None:
        if time_ms <= self.now_ms:
            return
        self.now_ms = time_ms
        horizon = time_ms - NOTIFY_WINDOW_MS
        for key in [k for k, intent in self.intents.items() if intent.time_ms < horizon]:
            del self.intents[key]

    def _record(self, event: Notification) -> None:
        intent = self.intents.get(event.command_id)
        if intent is None:
            return  # forgotten (past the window) or never ours
        state = intent.targets.setdefault(event.target, Attempts())
        if state.final:
            return  # a repeat of a final record changes nothing
        state.attempts = max(state.attempts, event.attempt)
        state.last_ms = max(state.last_ms, event.time_ms)
        if event.status != "failed":
            state.final = event.status

    # --- reads for the edge -------------------------------------------------------------
    def owed(self, target: str, kinds: frozenset[str] | None = None) -> list[Intent]:
        """Intents that still owe ``target`` a delivery, oldest first (log order)."""
        return sorted((i for i in self.intents.values()
                       if not i.targets.get(target, Attempts()).final and (kinds is None or i.kind in kinds)),
                      key=lambda i: i.seq)

    # --- the Projection protocol ----------------------------------------------------------
    def snapshot(self) -> bytes:
        ordered = sorted(self.intents.values(), key=lambda i: (i.seq, i.command_id))
        for intent in ordered:
            intent.targets = dict(sorted(intent.targets.items()))
        return _encoder.encode(_Snapshot(self.now_ms, ordered))

    def restore(self, data: bytes) -> None:
        snap = _decoder.decode(data)
        self.now_ms = snap.now_ms
        self.intents = {i.command_id: i for i in snap.intents}
