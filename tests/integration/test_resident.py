"""Resting rollouts against a real nats-server: with 3 rollouts in memory out of 14, the
rollback and canary_stats consumers commit the state a fold of the whole log in memory
has, publish a resting rollout's status, restart with at most 3 in memory, and still kill
a rollout that was resting when its breach arrived.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers import registry
from rollout_engine.consumers.consumer import stored_digest
from rollout_engine.consumers.folding import Folder
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import KillSwitch, decode, subjects
from rollout_engine.events.message import log_messages

CAP = 3
BAD = "bad"


async def _publish(js: object, events: list) -> None:
    for subject, payload in log_messages(events, 100):
        await js.publish(subject, payload)  # type: ignore[attr-defined]


async def _run(name: str, settings: object, nc: object) -> object:
    runner = consumer_runner(registry.build(name, settings), settings, nc=nc, until_idle=True)  # type: ignore[arg-type]
    summary = await runner.run()
    return runner, summary


async def _in_memory(js: object, name: str) -> tuple[str, list[str]]:
    """The digest and the emitted kill-switch ids of a fold of the whole log, every rollout in memory."""
    folder = Folder(registry.build(name).projection)
    kills: list[str] = []
    async for message in read_messages(js):  # type: ignore[arg-type]
        kills += [e.id for e in folder.fold_batch([message]).emitted if isinstance(e, KillSwitch)]
    return folder.projection.digest(), kills


async def test_capped_consumers_commit_publish_and_kill_as_if_all_were_in_memory(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    settings = msgspec.structs.replace(settings, resident_rollouts=CAP)
    breach = runs(BAD, 60, canary_pct=50, candidate=Profile(quality=82.0))
    await _publish(js, breach[:120])  # short of the 30 candidate samples the default policy needs
    for k in range(13):
        await _publish(js, runs(f"ok-{k:02d}", 25, canary_pct=50, t0=1_700_000_100_000 + k))

    runner, summary = await _run("rollback", settings, nc)
    assert runner.resident is not None and BAD in runner.resident.resting
    assert runner.resident.in_memory <= CAP and len(runner.resident.resting) == 14 - runner.resident.in_memory
    assert summary.digest == (await _in_memory(js, "rollback"))[0]
    assert await stored_digest(registry.build("rollback"), settings) == (summary.seq, summary.digest)
    kv = await js.key_value(subjects.STATE_BUCKET)
    status = msgspec.json.decode((await kv.get(subjects.kv_key("rollback", BAD))).value)
    whole = Folder(registry.build("rollback").projection)
    async for message in read_messages(js):
        whole.fold_batch([message])
    assert status == msgspec.json.decode(msgspec.json.encode(whole.projection.status(BAD)))  # type: ignore[attr-defined]

    stats_runner, stats = await _run("canary_stats", settings, nc)
    assert stats_runner.resident is not None and len(stats_runner.resident.resting) >= 14 - CAP
    assert stats.digest == (await _in_memory(js, "canary_stats"))[0]

    await _publish(js, breach[120:])  # the breach reaches a resting rollout, after a restart
    runner, summary = await _run("rollback", settings, nc)
    assert runner.resident is not None and runner.resident.loads >= 1
    _, kills = await _in_memory(js, "rollback")
    assert kills, "the whole-log fold kills the breaching rollout"
    logged = [decode(m.data).id async for m in read_messages(js, [subjects.control_filter(BAD, "kill_switch")])]
    assert logged == kills, "the capped consumer published the same kill, once"
    await _run("rollback", settings, nc)  # fold its own kill
    _, again = await _run("rollback", settings, nc)
    assert again.digest == (await _in_memory(js, "rollback"))[0]
