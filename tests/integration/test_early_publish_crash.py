"""A kill switch published before its batch's commit, then a crash before the commit:
the restarted consumer decides the same kill again and the log still holds it once.

The rollback consumer runs as a child process (``rollout consumer rollback``). Its store
is locked by a second connection (``BEGIN EXCLUSIVE``) before the breach's trigger is
published, so the batch that decides the kill cannot commit: the kill switch must
reach the log anyway (the early publish), and the process is SIGKILLed while its commit
waits. Restarted, it refolds the trigger from the committed position, re-sends the kill
under the same ``Nats-Msg-Id`` and commits; JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.events import encode, kind_of, subjects
from rollout_engine.events.message import log_messages
from tests.integration.faultkit import (
    clean_fold,
    committed,
    kill_switch_seqs,
    last_seq,
    spawn,
    stored_kill_switch_seqs,
    wait_for,
)

ROLLOUT = "early-crash"
TRIGGER = 237
"""Index of the event that makes the breach conclusive (the 30th bad candidate run,
the default policy's minimum sample): the kill is decided when it is folded."""


async def kill_switches(js: Any) -> list[int]:
    return await kill_switch_seqs(js, ROLLOUT)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_kill_published_before_its_commit_is_stored_once_after_a_crash(
    stack: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    settings, nc, js = stack
    data_dir = Path(settings.data_dir)
    events = runs(ROLLOUT, 60, canary_pct=50, candidate=Profile(quality=82.0))
    for subject, payload in log_messages(events[:TRIGGER], 100):
        await js.publish(subject, payload)
    head = await last_seq(js)

    first = await spawn(settings.nats_url, data_dir, "rollback")
    await wait_for(lambda: committed(data_dir, "rollback") >= head, 90, "the rollback consumer to fold the head")
    assert await kill_switches(js) == [], "the head alone must not be a conclusive breach"

    store = data_dir / "consumers" / "rollback.sqlite"
    holder = sqlite3.connect(store, timeout=30, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the consumer's next commit waits (then stalls) on this lock
    try:
        received = asyncio.Event()

        async def on_kill(_msg: Any) -> None:
            received.set()

        sub = await nc.subscribe(subjects.control(ROLLOUT, "kill_switch"), cb=on_kill)
        trigger = events[TRIGGER]
        await js.publish(subjects.event(ROLLOUT, kind_of(trigger)), encode(trigger))
        await asyncio.wait_for(received.wait(), 60)  # published while the commit cannot happen
        await sub.unsubscribe()
        kills = await stored_kill_switch_seqs(js, ROLLOUT)  # received by a subscriber: stored soon after
        assert len(kills) == 1, kills
        assert committed(data_dir, "rollback") == head, "the batch that decided the kill must not be committed yet"
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        holder.execute("ROLLBACK")
        holder.close()
    assert committed(data_dir, "rollback") == head

    second = await spawn(settings.nats_url, data_dir, "rollback", "--until-idle", "--json")
    out, _ = await asyncio.wait_for(second.communicate(), 90)
    assert second.returncode == 0, (data_dir / "rollback.stderr").read_text()[-2000:]
    result = json.loads(out)

    last = await last_seq(js)
    assert await kill_switches(js) == kills, "the re-decided kill must be dropped as a duplicate"
    assert result["seq"] == last
    expected, _ = await clean_fold(js, "rollback", settings, last)
    assert result["digest"] == expected
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
