"""The restart policy of `rollout up`'s supervisor: immediate, backoff only for a crash loop."""

from __future__ import annotations

from rollout_engine.engine.stack.supervisor import (
    BACKOFF_MAX_S,
    CRASH_LOOP_AFTER,
    FAST_EXIT_S,
    ChildHealth,
)


def test_a_crash_after_a_healthy_run_restarts_at_once_every_time() -> None:
    health = ChildHealth()
    for _ in range(20):
        assert health.exited(-9, FAST_EXIT_S + 1, 0) == 0.0
    assert not health.crash_loop and health.backoff_s == 0.0


def test_backoff_applies_only_to_fast_repeated_exits_and_resets_after_a_healthy_run() -> None:
    health = ChildHealth()
    delays = [health.exited(1, 0.2, 0) for _ in range(8)]
    assert delays[0] == 0.0, "the first fast exit restarts at once"
    assert delays[1:4] == [0.5, 1.0, 2.0]
    assert max(delays) == BACKOFF_MAX_S and delays[-1] == BACKOFF_MAX_S
    assert health.crash_loop and health.fast_exits == 8 >= CRASH_LOOP_AFTER
    health.healthy_for(FAST_EXIT_S + 0.1)  # the replacement has now run long enough
    assert not health.crash_loop and health.backoff_s == 0.0
    assert health.exited(1, 0.2, 0) == 0.0, "a new fast exit starts from scratch"


def test_a_crash_loop_needs_several_fast_exits_in_a_row() -> None:
    health = ChildHealth()
    for _ in range(CRASH_LOOP_AFTER - 1):
        health.exited(1, 1.0, 0)
    assert not health.crash_loop
    health.exited(1, 1.0, 0)
    assert health.crash_loop
