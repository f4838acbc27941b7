"""The subject map: builders, parsers, and refusal of injection attempts."""

from __future__ import annotations

import pytest

from rollout_engine.events import EventError, check_token, command_id, subjects

INJECTIONS = ["a.b", "*", ">", "a b", "a\tb", "a\nb", "", "x" * 65, "ro.ctl.>", "a\x00", "é"]


def test_builders_and_parser_agree() -> None:
    assert subjects.event("r1", "decision") == "ro.evt.r1.decision"
    assert subjects.control("r1", "kill_switch") == "ro.ctl.r1.kill_switch"
    assert subjects.parse("ro.evt.r1.metric") == ("evt", "r1", "metric")
    assert subjects.parse("ro.ctl.r1.resume") == ("ctl", "r1", "resume")
    assert subjects.parse(subjects.TICK) == ("tick", None, None)
    assert subjects.parse(subjects.dlq("canary_stats")) == ("dlq", "canary_stats", None)


@pytest.mark.parametrize("bad", INJECTIONS)
def test_subject_injection_attempts_are_refused_everywhere(bad: str) -> None:
    for build in (
        lambda: subjects.event(bad, "decision"),
        lambda: subjects.control(bad, "kill_switch"),
        lambda: subjects.stats(bad),
        lambda: subjects.dlq(bad),
        lambda: subjects.events_filter(bad),
        lambda: subjects.control_filter(bad),
    ):
        with pytest.raises(EventError, match="subject tokens"):
            build()


def test_unknown_kinds_and_foreign_subjects_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown producer event kind"):
        subjects.event("r1", "kill_switch")
    with pytest.raises(ValueError, match="unknown control command"):
        subjects.control("r1", "teleport")
    with pytest.raises(ValueError, match="not a rollout-engine subject"):
        subjects.parse("foo.bar")


def test_command_ids_are_deterministic_tokens() -> None:
    first = command_id("kill", "r1", 42)
    assert first == command_id("kill", "r1", 42) != command_id("kill", "r1", 43)
    assert check_token(first, "id") == first
