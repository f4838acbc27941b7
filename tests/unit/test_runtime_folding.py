"""The one fold: order, gaps, dead letters, and every path that folds the log running it.

The crash/redelivery property for every registered consumer is in
``test_projection_contract.py``; the live runtime against a real nats-server is in
``tests/integration/test_runtime.py``.
"""

from __future__ import annotations

import sys

from rollout_engine.consumers import folding
from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.control import ControlProjection
from rollout_engine.consumers.folding import Folder, fold_events, fold_message
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.engine.logtools.backtest import run_policy
from rollout_engine.engine.logtools.profiles import PROFILES, REGRESSIONS
from rollout_engine.engine.logtools.replay import replay_messages
from rollout_engine.engine.logtools.simulate import Scenario, run_rollout
from rollout_engine.events import ControlState, KillSwitch, LogMessage, encode, subjects
from tests.unit.test_projection_contract import LOG, T0


def new_stats() -> CanaryStats:
    return CanaryStats(last_n=5, window_ms=2_000, time_cap=8)


def test_a_message_after_a_gap_is_held_not_folded() -> None:
    folder = Folder(new_stats())
    result = folder.fold_batch([LOG[0], LOG[2], LOG[3]])
    assert result.seq == 1 and [m.seq for m in result.held] == [3, 4]
    folder.skip_to(2)  # the runtime found seq 2 deleted from the stream
    assert folder.fold_batch(result.held).seq == 4


def _kill(event_id: str = "k") -> KillSwitch:
    return KillSwitch(id=event_id, rollout="a", time_ms=T0, producer="api", actor="op", reason="x",
                      before=ControlState(), after=ControlState(kill_switch=True))


def test_a_reducer_exception_becomes_a_dead_letter_and_the_fold_goes_on() -> None:
    class Fragile(ControlProjection):
        def apply(self, event, seq):  # type: ignore[no-untyped-def]
            if seq == 2:
                raise ZeroDivisionError("boom")
            return super().apply(event, seq)

    folder = Folder(Fragile())
    subject = subjects.control("a", "kill_switch")
    result = folder.fold_batch([LogMessage(seq, subject, encode(_kill())) for seq in (1, 2, 3)])
    assert result.seq == 3 and result.events == 3
    assert [(d.seq, d.field, d.reason) for d in result.dead] == [(2, "projection", "ZeroDivisionError: boom")]


def test_control_snapshot_is_a_plain_map_of_states_and_restores_byte_for_byte() -> None:
    folder = Folder(ControlProjection())
    folder.fold_batch(LOG)
    pushed = ControlProjection()
    pushed.restore(folder.projection.snapshot())
    assert pushed.snapshot() == folder.projection.snapshot()
    assert pushed.states == folder.projection.states and pushed.states


def test_emitted_events_go_to_their_subject() -> None:
    assert subjects.for_event(_kill()) == "ro.ctl.a.kill_switch"


def test_the_live_fold_replay_and_backtest_run_the_same_function(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every path records who called each ``apply``: always ``fold_events`` (which
    ``fold_message`` runs after reading the message), one code object; the policy
    simulator, whose events never were a message, runs the same function."""
    callers: dict[str, set[object]] = {}

    def spying(path: str) -> RollbackProjection:
        class Spy(RollbackProjection):
            def apply(self, event, seq):  # type: ignore[no-untyped-def]
                callers.setdefault(path, set()).add(sys._getframe(1).f_code)
                return super().apply(event, seq)

        return Spy()

    live, replayed = spying("runtime"), spying("replay")
    Folder(live).fold_batch(LOG)
    replay_messages(LOG, [replayed])
    monkeypatch.setattr("rollout_engine.engine.logtools.backtest.RollbackProjection", lambda: spying("backtest"))
    run_policy(LOG, "live")
    monkeypatch.setattr("rollout_engine.engine.logtools.simulate.RollbackProjection", lambda: spying("simulate"))
    run_rollout(Scenario(None, PROFILES["typical"], 50.0, REGRESSIONS["none"], rollouts=1, minutes=0.05), 0)
    assert set(callers) == {"runtime", "replay", "backtest", "simulate"}
    assert all(found == {fold_events.__code__} for found in callers.values()), callers
    assert live.digest() == replayed.digest()
    assert folding.fold_message is fold_message
