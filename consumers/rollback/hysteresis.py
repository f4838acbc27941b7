"""Per-guard hysteresis: sustain, recovery, hold-down and flap penalty, so one noisy sample
neither kills a candidate nor lifts an alarm.

Each guard of a rollout owns a :class:`GuardMachine`. Every evaluation feeds it one
:data:`Status` at an event time; the machine answers whether the guard just went into
alarm (the breach is conclusive), just recovered, or just hit its inconclusive limit.

::

    ok --fail--> pending --fail for sustain_ms and min_failures checks--> ALARM
     ^              |                                                      |
     +---pass/hold--+       ok <--pass for recovery_sustain_ms-- recovering <--pass after hold_down_ms
                                                                   |--fail/hold--> alarm

Consecutive-failure semantics: any evaluation that is not a failure while pending
resets the machine to ``ok``, so isolated blips never accumulate into an alarm (the
Flagger #1353 trap). ``hold`` means "between the recovery threshold and the fire
threshold": it neither fires nor recovers. ``inconclusive`` (too little data, or a
breach that is not significant) neither advances nor resets.

Flap detection counts alarm/recover toggles in ``flap_window_ms``; more than
``max_toggles`` starts a penalty of ``penalty_ms`` during which each guard's threshold
is made harder to cross by its ``penalty_threshold_add``.

Pure: no clock, no I/O; time is the event time passed in.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from rollout_engine.consumers.rollback.policy import Hysteresis

__all__ = ["GuardMachine", "Signal", "Status", "carry_over", "step"]

Status = Literal["pass", "hold", "fail", "inconclusive"]
Signal = Literal["alarm", "recovered", "inconclusive_limit"]


class GuardMachine(msgspec.Struct, array_like=True, gc=False):
    """Mutable hysteresis state of one guard (msgpack-able for snapshots)."""

    state: str = "ok"  # ok | pending | alarm | recovering
    since_ms: int = 0
    alarm_ms: int = 0
    failures: int = 0
    last_check_ms: int = 0
    inconclusive: int = 0
    last_inconclusive_ms: int = 0
    toggles: list[int] = msgspec.field(default_factory=list)
    penalty_until_ms: int = 0
    last: str = ""  # the last evaluation's status (what ``rollout status`` shows), "" before the first
    n: int = 0  # with ``need``: the samples a guard short of its minimum had
    need: int = 0  # the minimum it was short of (0: it was not short)

    def penalized(self, now_ms: int) -> bool:
        """True while a flap penalty raises this guard's threshold."""
        return now_ms < self.penalty_until_ms

    @property
    def alarmed(self) -> bool:
        """In alarm (or not yet recovered from it)."""
        return self.state in ("alarm", "recovering")


def _toggle(m: GuardMachine, now: int, cfg: Hysteresis) -> None:
    if not cfg.flap_detection:
        return
    m.toggles = [t for t in m.toggles if now - t < cfg.flap_window_ms]
    m.toggles.append(now)
    if len(m.toggles) > cfg.max_toggles:
        m.penalty_until_ms = now + cfg.penalty_ms
        m.toggles = []


def carry_over(m: GuardMachine, now: int, cfg: Hysteresis) -> GuardMachine:
    """The machine a new evidence epoch starts with: judged afresh, but its flap history kept.

    The toggles and a running penalty survive, and an alarm lifted by hand (a resume
    after a kill) counts as a toggle, as a recovery would: flapping is penalised however
    it happens, so kill/resume cycles add up like alarm/recover cycles.
    """
    fresh = GuardMachine(toggles=list(m.toggles), penalty_until_ms=m.penalty_until_ms)
    if m.alarmed:
        _toggle(fresh, now, cfg)
    return fresh


def step(m: GuardMachine, status: Status, now: int, cfg: Hysteresis) -> Signal | None:
    """Feed one evaluation; return the signal it causes, if any."""
    if status == "pass" and m.state == "ok":  # the common case on healthy traffic
        m.inconclusive = 0
        return None
    if status == "inconclusive":
        if m.inconclusive == 0 or now - m.last_inconclusive_ms >= cfg.check_interval_ms:
            m.inconclusive += 1
            m.last_inconclusive_ms = now
            if cfg.inconclusive_limit and m.inconclusive == cfg.inconclusive_limit:
                return "inconclusive_limit"
        return None
    m.inconclusive = 0
    state = m.state
    if state == "ok":
        if status != "fail":
            return None
        m.state, m.since_ms, m.failures, m.last_check_ms = "pending", now, 1, now
        state = "pending"
    elif state == "pending":
        if status != "fail":
            m.state, m.failures = "ok", 0
            return None
        if now - m.last_check_ms >= cfg.check_interval_ms:
            m.failures += 1
            m.last_check_ms = now
    if state == "pending":
        if now - m.since_ms >= cfg.sustain_ms and m.failures >= cfg.min_failures:
            m.state, m.alarm_ms = "alarm", now
            _toggle(m, now, cfg)
            return "alarm"
        return None
    if state == "alarm":
        if status != "pass" or now - m.alarm_ms < cfg.hold_down_ms:
            return None
        m.state, m.since_ms = "recovering", now
        state = "recovering"
    if state == "recovering":
        if status != "pass":
            m.state = "alarm"
            return None
        if now - m.since_ms >= cfg.recovery_sustain_ms:
            m.state, m.failures = "ok", 0
            _toggle(m, now, cfg)
            return "recovered"
    return None
