"""The commit lane keeps one commit in flight, hands back what it committed, and raises a
failed commit once (the runtime then stops; the next process refolds from the store)."""

from __future__ import annotations

import asyncio

import pytest

from rollout_engine.consumers.folding import BatchResult
from rollout_engine.consumers.lane import CommitLane


async def test_landed_waits_for_the_commit_and_returns_its_batch() -> None:
    lane, gate = CommitLane(), asyncio.Event()
    batch = BatchResult(7)

    async def commit() -> BatchResult:
        await gate.wait()
        return batch

    assert await lane.landed() is None and not lane.busy
    lane.start(commit())
    assert lane.busy
    waiting = asyncio.create_task(lane.landed())
    await asyncio.sleep(0.01)
    assert not waiting.done(), "landed() must wait for the commit in flight"
    gate.set()
    assert await waiting is batch and not lane.busy


async def test_a_second_commit_is_refused_while_one_is_in_flight() -> None:
    lane = CommitLane()

    async def commit() -> BatchResult:
        return BatchResult(1)

    lane.start(commit())
    second = commit()
    with pytest.raises(RuntimeError, match="already in flight"):
        lane.start(second)
    assert (await lane.landed()).seq == 1  # type: ignore[union-attr]


async def test_a_failed_commit_raises_once() -> None:
    lane = CommitLane()

    async def commit() -> BatchResult:
        raise OSError("disk gone")

    lane.start(commit())
    with pytest.raises(OSError, match="disk gone"):
        await lane.landed()
    assert await lane.landed() is None and not lane.busy
