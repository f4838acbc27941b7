"""What a consumer restart puts in KV, against a real nats-server (consumers/mirror.py rule 4,
consumers/unmirrored.py): after a clean run nothing, and no resting rollout is loaded; after
a process that committed but could not put (KV gone) and was SIGKILLed, exactly the
rollouts it committed and did not put.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.consumers import registry
from rollout_engine.consumers.rollback.scenario import runs
from rollout_engine.engine.bus import provision
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import subjects
from rollout_engine.events.message import log_messages
from tests.integration.faultkit import committed, last_seq, spawn

T0 = 1_700_000_000_000


async def _publish(js: Any, rollouts: list[str], t0: int = T0) -> None:
    for k, rollout in enumerate(rollouts):
        for subject, payload in log_messages(runs(rollout, 12, canary_pct=50, t0=t0 + k), 50):
            await js.publish(subject, payload)


class _Puts:
    """Every KV put into ``ro_state``, seen by a core subscription on its subjects."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.sub: Any = None

    async def watch(self, nc: Any) -> _Puts:
        async def seen(msg: Any) -> None:
            self.keys.append(msg.subject.removeprefix(f"$KV.{subjects.STATE_BUCKET}."))

        self.sub = await nc.subscribe(f"$KV.{subjects.STATE_BUCKET}.>", cb=seen)
        await nc.flush()
        return self


async def _run(name: str, settings: Any, nc: Any) -> Any:
    runner = consumer_runner(registry.build(name, settings), settings, nc=nc, until_idle=True)
    await runner.run()
    await nc.flush()  # the puts' messages reached the subscription before their acks
    return runner


def _listed(settings: Any, name: str) -> list[str]:
    with sqlite3.connect(Path(settings.data_dir) / "consumers" / f"{name}.sqlite") as db:
        return [key for (key,) in db.execute("SELECT key FROM unmirrored ORDER BY key")]


@pytest.mark.parametrize("name", ["rollback", "canary_stats"])
async def test_a_restart_after_a_clean_run_puts_nothing_and_loads_no_resting_rollout(stack: Any, name: str) -> None:
    settings, nc, js = stack
    settings = msgspec.structs.replace(settings, resident_rollouts=3)
    rollouts = [f"r{k:02d}" for k in range(14)]
    await _publish(js, rollouts)
    first = await _Puts().watch(nc)
    runner = await _run(name, settings, nc)
    kind = runner.consumer.mirror.kind
    assert {f"{kind}.{r}" for r in rollouts} <= set(first.keys), "the first run put every rollout"
    assert runner.resident is not None and len(runner.resident.resting) >= 10
    assert _listed(settings, name) == [], "every put was taken off the store's list"
    await first.sub.unsubscribe()

    again = await _Puts().watch(nc)
    runner = await _run(name, settings, nc)
    assert again.keys == [] and runner.consumer.mirror.puts == 0, "a restart with nothing new puts nothing"
    assert runner.resident is not None and runner.resident.loads == 0, "no resting rollout was loaded"
    assert len(runner.resident.resting) >= 10


async def test_a_process_killed_after_commits_kv_refused_puts_exactly_those_at_restart(stack: Any,
                                                                                      tmp_path: Path) -> None:
    settings, nc, js = stack
    name = "canary_stats"
    rollouts = [f"r{k}" for k in range(6)]
    await _publish(js, rollouts)
    await _run(name, settings, nc)
    assert _listed(settings, name) == []

    await js.delete_key_value(subjects.STATE_BUCKET)  # KV unavailable: every put fails
    changed = ["r1", "r4"]
    await _publish(js, changed, t0=T0 + 60_000)
    target = await last_seq(js)
    proc = await spawn(settings.nats_url, Path(settings.data_dir), name)
    try:
        for _ in range(600):  # committed, its puts refused: listed, then the process dies
            if committed(settings.data_dir, name) >= target:
                break
            await asyncio.sleep(0.05)
        assert committed(settings.data_dir, name) >= target, "the consumer process did not fold the new events"
        assert _listed(settings, name) == changed
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _listed(settings, name) == changed, "what was committed and not put stays listed"

    await provision(js, settings)  # KV is back
    puts = await _Puts().watch(nc)
    runner = await _run(name, settings, nc)
    assert sorted(puts.keys) == [f"stats.{r}" for r in changed] and runner.consumer.mirror.puts == 2
    assert _listed(settings, name) == []
    kv = await js.key_value(subjects.STATE_BUCKET)
    for rollout in changed:
        value = msgspec.json.decode((await kv.get(subjects.kv_key("stats", rollout))).value)
        assert value["rollout"] == rollout and value["windows"]["all"], value
