"""The watcher's view and `rollout wait`'s conditions: pure folds of pushed commands."""

from __future__ import annotations

import argparse

import pytest

from rollout_engine.engine.cli.rollout_view import RolloutView
from rollout_engine.engine.cli.wait import parse_condition, parse_duration
from rollout_engine.events import ConfigChange, ControlState, KillSwitch, Resume

R = "checkout-v2"


def _status(pct: float, seq: int) -> dict:
    return {"rollout": R, "control": {"canary_pct": pct, "kill_switch": False, "paused": False},
            "last_command": {"seq": seq}, "progression": {"steps": [5, 20, 50, 100]}}


def _config(before: ControlState, **after: object) -> ConfigChange:
    return ConfigChange(id="c", rollout=R, time_ms=1, producer="api", actor="alice", reason="r", before=before,
                        after=ControlState(**{"canary_pct": before.canary_pct, **after}))


def test_older_commands_never_move_the_view_back() -> None:
    view = RolloutView.from_status(_status(20.0, seq=10))
    stale = _config(ControlState(), canary_pct=5.0)
    assert not view.apply_event(stale, 7) and view.canary_pct == 20.0  # a "last per subject" replay
    assert view.apply_event(_config(ControlState(canary_pct=20.0), canary_pct=50.0), 11)
    assert (view.phase, view.step) == ("progressing", 3)


def test_phases_and_conditions() -> None:
    view = RolloutView.from_status(_status(5.0, seq=1))
    killed, promoted, step2, healthy = (parse_condition(c) for c in ("killed", "promoted", "step=2", "healthy"))
    assert [c.judge(view) for c in (killed, promoted, step2, healthy)] == ["pending"] * 4
    view.apply_event(KillSwitch(id="k", rollout=R, time_ms=2, producer="api", actor="bob", reason="x",
                                before=ControlState(canary_pct=5.0),
                                after=ControlState(kill_switch=True), action="abort"), 2)
    assert view.phase == "aborted" and view.last_command["action"] == "abort"
    assert [c.judge(view) for c in (killed, promoted, step2, healthy)] == ["met", "opposite", "opposite", "opposite"]
    view.apply_event(Resume(id="r", rollout=R, time_ms=3, producer="api", actor="bob", reason="x",
                            before=ControlState(kill_switch=True), after=ControlState(canary_pct=100.0)), 3)
    assert view.phase == "promoted" and killed.judge(view) == "opposite" and promoted.judge(view) == "met"
    view.apply_evaluation({"verdict": "healthy"})
    assert healthy.judge(view) == "met"
    view.apply_event(_config(ControlState(canary_pct=100.0), paused=True), 4)
    assert view.phase == "paused"


def test_a_policy_in_a_config_command_gives_the_steps() -> None:
    view = RolloutView.from_status(_status(5.0, seq=1))
    change = ConfigChange(id="p", rollout=R, time_ms=2, producer="api", actor="alice", reason="policy",
                          before=ControlState(canary_pct=5.0), after=ControlState(canary_pct=5.0, policy_version=1),
                          policy={"progression": {"steps": [5, 50, 100]}})
    view.apply_event(change, 2)
    assert view.steps == [5.0, 50.0, 100.0] and view.summary()["of"] == 3
    plain = ConfigChange(id="q", rollout=R, time_ms=3, producer="api", actor="alice", reason="policy",
                         before=change.after, after=ControlState(canary_pct=5.0, policy_version=2), policy={})
    view.apply_event(plain, 3)
    assert view.steps == [5.0, 10.0, 20.0, 50.0, 100.0]  # the new policy has the default steps


def test_arguments() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "5m", "1h", "500ms")] == [90, 90, 300, 3600, 0.5]
    for bad in ("soon", "-1s", "5d"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    for bad in ("green", "step=0", "step=", "step=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_condition(bad)
