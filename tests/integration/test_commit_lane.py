"""The commit lane: a batch is folded, and its kill switch published, while the previous
batch's commit is still held.

An in-process rollback consumer runs against a real nats-server; its store's commit is
wrapped so that the commit of the batch that ends the breach's head waits on a gate. The
trigger published then must still be folded beside that held commit and its kill
switch reach the log, with nothing of the head committed or acked; the gate opened,
both batches commit in order, the kill is in the log once and the digest equals a clean
fold's. Before the lane, a held commit held the loop: no kill until the store answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import subjects
from rollout_engine.events.message import log_messages
from tests.integration.faultkit import (
    build,
    clean_fold,
    committed,
    kill_switch_seqs,
    last_seq,
    stored_kill_switch_seqs,
    wait_for,
)

NAME = "rollback"
ROLLOUT = "lane"
TRIGGER = 237
"""Index of the event that makes the breach conclusive (the 30th bad candidate run, the
default policy's minimum sample): the kill is decided when it is folded."""


async def kill_switches(js: Any) -> list[int]:
    return await kill_switch_seqs(js, ROLLOUT)


@pytest.mark.timeout(120)
async def test_a_kill_leaves_while_the_previous_batch_commit_is_held(stack: tuple[Any, Any, Any]) -> None:
    settings, nc, js = stack
    events = runs(ROLLOUT, 60, canary_pct=50, candidate=Profile(quality=82.0))
    head = log_messages(events[:TRIGGER], 100)
    for subject, payload in head:
        await js.publish(subject, payload)
    head_last = await last_seq(js)

    runner = consumer_runner(build(NAME, settings), settings, fetch_timeout=0.2)
    real_commit = runner.store.commit
    holding, gate = asyncio.Event(), asyncio.Event()

    async def held_commit(seq: int, *args: Any) -> None:
        if seq >= head_last:  # the batch that ends the head, and every later one, waits for the gate
            holding.set()
            await gate.wait()
        await real_commit(seq, *args)

    runner.store.commit = held_commit  # type: ignore[method-assign]
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(holding.wait(), 60)
        assert await kill_switches(js) == [], "the head alone must not be a conclusive breach"
        received = asyncio.Event()

        async def on_kill(_msg: Any) -> None:
            received.set()

        sub = await nc.subscribe(subjects.control(ROLLOUT, "kill_switch"), cb=on_kill)
        for subject, payload in log_messages(events[TRIGGER:TRIGGER + 1]):
            await js.publish(subject, payload)
        await asyncio.wait_for(received.wait(), 30)  # folded beside the held commit
        await sub.unsubscribe()
        kills = await stored_kill_switch_seqs(js, ROLLOUT)  # received by a subscriber: stored soon after
        assert len(kills) == 1, kills
        assert committed(settings.data_dir, NAME) < head_last, "the held commit may not have landed"
        info = await js.consumer_info(subjects.LOG_STREAM, NAME)
        assert info.ack_floor.stream_seq < head_last, "a message was acked before its commit"
    finally:
        gate.set()

    last = await last_seq(js)
    await wait_for(lambda: committed(settings.data_dir, NAME) == last, 30, "both held batches to be committed")
    runner.stop()
    summary = await asyncio.wait_for(task, 20)
    assert await kill_switches(js) == kills, "the kill must be in the log once"
    expected, _ = await clean_fold(js, NAME, settings, last)
    assert summary.seq == last and summary.digest == expected
