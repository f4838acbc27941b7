"""The notifier's fold: delivery intents and their outcomes, pure and replayable."""

from __future__ import annotations

from rollout_engine.consumers.notifier import NOTIFY_WINDOW_MS, NotifierProjection
from rollout_engine.consumers.projection import Projection, digest_of
from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Escalation,
    KillSwitch,
    Notification,
    Resume,
    Tick,
)

R, T0 = "checkout-v2", 1_700_000_000_000
ON, OFF = ControlState(kill_switch=True), ControlState(canary_pct=5.0)


def _kill(i: str, t: int = T0) -> KillSwitch:
    return KillSwitch(id=i, rollout=R, time_ms=t, producer="rollback", actor="rollback", reason="latency",
                      before=OFF, after=ON)


def _record(cmd: str, target: str, status: str, attempt: int, t: int = T0 + 1) -> Notification:
    return Notification(id=f"n-{cmd}-{target}-{status}-{attempt}", rollout=R, time_ms=t, producer="notifier",
                        actor="notifier", target=target, command_id=cmd, command_kind="kill_switch",
                        delivery_id=f"d-{cmd}-{target}", status=status, attempt=attempt)  # type: ignore[arg-type]


def _log() -> list:
    return [
        _kill("k1"),
        ConfigChange(id="c1", rollout=R, time_ms=T0 + 1, producer="api", actor="a", reason="r", before=ON, after=ON),
        Resume(id="r1", rollout=R, time_ms=T0 + 2, producer="api", actor="a", reason="fixed", before=ON, after=OFF),
        Escalation(id="e1", rollout=R, time_ms=T0 + 3, producer="rollback", actor="rollback", reason="x3",
                   trigger="quality", count=3),
        Escalation(id="e2", rollout=R, time_ms=T0 + 4, producer="rollback", actor="rollback", reason="x3",
                   trigger="quality", state="expired"),
        _kill("k1"),  # the same command again (past JetStream's duplicate window): one intent
        _record("k1", "oncall", "failed", 1),
        _record("k1", "oncall", "failed", 2, T0 + 5),
        _record("k1", "chat", "delivered", 1),
    ]


def fold(events: list, p: NotifierProjection | None = None) -> NotifierProjection:
    p = p or NotifierProjection()
    for seq, event in enumerate(events, 1):
        assert p.apply(event, seq) == []
    return p


def test_is_a_projection_of_kill_resume_and_armed_escalations() -> None:
    p = fold(_log())
    assert isinstance(p, Projection)
    assert [i.command_id for i in p.owed("oncall")] == ["k1", "r1", "e1"]
    assert [i.command_id for i in p.owed("chat")] == ["r1", "e1"]  # k1 was delivered to chat
    assert [i.command_id for i in p.owed("oncall", frozenset({"resume"}))] == ["r1"]
    k1 = p.intents["k1"].targets["oncall"]
    assert (k1.attempts, k1.last_ms, k1.final) == (2, T0 + 5, "")


def test_final_records_stop_the_deliveries_and_repeats_change_nothing() -> None:
    p = fold([*_log(), _record("k1", "oncall", "dead", 3), _record("k1", "oncall", "failed", 4)])
    assert "k1" not in [i.command_id for i in p.owed("oncall")]
    assert p.intents["k1"].targets["oncall"].final == "dead"


def test_intents_are_forgotten_after_the_window_and_old_commands_ignored() -> None:
    p = fold(_log())
    p.apply(Tick(id="t", time_ms=T0 + NOTIFY_WINDOW_MS + 10, producer="engine"), 100)
    assert p.intents == {}
    p.apply(_kill("k0", t=T0), 101)  # stored long after its time: not notified
    assert p.owed("oncall") == []


def test_snapshot_restores_byte_identical() -> None:
    p = fold(_log())
    q = NotifierProjection()
    q.restore(p.snapshot())
    assert digest_of(q.snapshot()) == digest_of(p.snapshot()) == digest_of(fold(_log()).snapshot())
