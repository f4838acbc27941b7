"""The rollback consumer is down while a regression happens: when it returns it catches up
and fires exactly one kill switch, however often it is restarted or killed afterwards.

The kill's id is ``command_id("kill", rollout, cause)``, derived from the log; the command
goes out through the consumer's outbox with that id as ``Nats-Msg-Id``. So a process that
dies after its commit and before (or during) its relay republishes the same id, and a
process that re-folds from an older position emits the same id again: JetStream keeps one.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from rollout_engine.consumers.rollback.scenario import Profile, policy_change, runs
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import Event, KillSwitch, decode_message, encode, subjects
from tests.integration.faultkit import SOAK, committed, last_seq, spawn, wait_for

R = "checkout-down"
NAME = "rollback"


async def _publish(js: object, events: list[Event]) -> None:
    for event in events:
        await js.publish_async(subjects.for_event(event), encode(event))  # type: ignore[attr-defined]
    await js.publish_async_completed()  # type: ignore[attr-defined]


async def _kills(js: object) -> list[KillSwitch]:
    out: list[KillSwitch] = []
    for seq in range(1, await last_seq(js) + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)  # type: ignore[attr-defined]
        if msg.subject == subjects.control(R, "kill_switch"):
            out.extend(e for e in decode_message(msg.data or b"") if isinstance(e, KillSwitch))
    return out


@pytest.mark.slow
@pytest.mark.timeout(120 * SOAK)
async def test_rollback_consumer_down_during_a_regression_fires_exactly_one_kill(
    fresh_server: EmbeddedServer, stack: tuple[Settings, Any, Any]
) -> None:
    settings, _nc, js = stack  # own server, provisioned; closed by the fixture
    data_dir = Path(settings.data_dir)

    start = policy_change(R, None, canary_pct=50.0)
    await _publish(js, [start, *runs(R, 60, canary_pct=50.0)])  # healthy
    proc = await spawn(fresh_server.url, data_dir, NAME, "--batch", "16")
    healthy = await last_seq(js)
    await wait_for(lambda: committed(data_dir, NAME) == healthy, 30, "the healthy phase to be folded")
    proc.send_signal(signal.SIGKILL)  # the rollback consumer goes down
    await proc.wait()
    assert await _kills(js) == []

    await _publish(js, runs(R, 200, canary_pct=50.0, candidate=Profile(quality=80.0), start=60))  # regression
    assert await _kills(js) == [], "nobody may kill while the rollback consumer is down"

    # It comes back: once killed again at a random point of its catch-up, then to the end.
    rng = random.Random(7)
    proc = await spawn(fresh_server.url, data_dir, NAME, "--batch", "4")
    await wait_for(lambda: committed(data_dir, NAME) > healthy, 30, "the catch-up to start")
    await asyncio.sleep(rng.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    for _ in range(2 * SOAK):  # and restarted twice more (soak: twenty times): no second kill
        proc = await spawn(fresh_server.url, data_dir, NAME, "--until-idle", "--json")
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (data_dir / f"{NAME}.stderr").read_text()[-2000:]
        result = json.loads(out)
    kills = await _kills(js)
    last = await last_seq(js)
    assert len(kills) == 1, [k.id for k in kills]
    [kill] = kills
    assert kill.after.kill_switch and kill.reason.startswith("quality (")
    assert result["seq"] == last  # caught up, the kill itself included
