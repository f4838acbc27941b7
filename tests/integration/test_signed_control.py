"""Signed control commands against a real nats-server: forged resumes are refused, a forged
kill only stops the candidate, the engine's own kill is obeyed.

Outside secure mode anyone may publish on ``ro.ctl``: that stands in for a credential
wrongly allowed to publish there. The SDK requires signatures; the operator API runs
in-process with the engine's signer, its ring published in KV as ``rollout up`` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from rollout_engine.engine.api.client import call
from rollout_engine.engine.api.service import serve_api
from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.stack.signing import CommandSigner, publish_keys
from rollout_engine.events import ControlState, KillSwitch, Resume, encode, new_event_id, subjects


def _refused(reason: str) -> float:
    return m.CONTROL_REFUSED.labels(reason)._value.get()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _forge(js, cls, rollout: str, after: ControlState, signer: CommandSigner | None = None) -> None:
    """A correctly shaped command, published on its control subject like the engine's."""
    command = "kill_switch" if cls is KillSwitch else "resume"
    event = cls(id=new_event_id(), rollout=rollout, time_ms=int(time.time() * 1000), producer="engine",
                actor="ops", reason="forged", before=ControlState(), after=after)
    subject, data = subjects.control(rollout, command), encode(event)
    await js.publish(subject, data, headers={"Nats-Msg-Id": event.id,
                                             **(signer.headers(subject, data) if signer else {})})


async def test_forged_commands_are_refused_and_the_engine_kill_is_obeyed(stack, tmp_path: Path, rollout_id) -> None:
    settings, nc, js = stack
    engine = CommandSigner.ephemeral()
    assert await publish_keys(js, engine.ring)
    stop, ready = asyncio.Event(), asyncio.Event()
    api = asyncio.create_task(serve_api(nc, stop, ready, signer=engine))
    await ready.wait()
    try:
        other = f"{rollout_id}-b"
        for rollout in (rollout_id, other):
            await call(nc, "config", {"rollout": rollout, "actor": "alice", "canary_pct": 100, "create": True})
        async with RolloutClient(settings, producer="signed", outbox_path=tmp_path / "outbox.sqlite",
                                 require_signed=True) as client:
            assert client.assign(rollout_id, "user-1") == "candidate", "the engine's signed config applies"

            await call(nc, "abort", {"rollout": rollout_id, "actor": "bob", "reason": "quality drop"})
            await _until(lambda: client.state(rollout_id).kill_switch)
            assert client.assign(rollout_id, "user-1") == "baseline", "the engine's kill is obeyed"

            unsigned, unknown = _refused("unsigned"), _refused("unknown_key")
            resumed = ControlState(canary_pct=100, config_version=100)
            await _forge(js, Resume, rollout_id, resumed)
            await _forge(js, Resume, rollout_id, resumed, signer=CommandSigner.ephemeral())
            await _until(lambda: _refused("unsigned") > unsigned and _refused("unknown_key") > unknown)
            assert client.state(rollout_id).kill_switch, "a forged resume does not lift the engine's kill"
            assert client.assign(rollout_id, "user-1") == "baseline"

            # A forged kill is refused as sent (its other fields are not taken) but still stops the
            # candidate: the engine's readers fold it too, and believe the rollout killed.
            before, stops = client.state(other), m.CONTROL_UNVERIFIED_STOPS.labels("unsigned")._value.get()
            forged = ControlState(canary_pct=0, kill_switch=True, config_version=100, baseline="evil")
            await _forge(js, KillSwitch, other, forged)
            await _until(lambda: client.state(other).kill_switch)
            assert m.CONTROL_UNVERIFIED_STOPS.labels("unsigned")._value.get() == stops + 1
            assert client.state(other) == msgspec.structs.replace(before, kill_switch=True, canary_pct=0.0)
            assert client.assign(other, "user-1") == before.baseline
            reply = await call(nc, "abort", {"rollout": other, "actor": "bob", "reason": "after the forgery"})
            assert reply["changed"] is False, "the API folds the forged kill as the engine's readers all do"
    finally:
        stop.set()
        await api


async def test_engine_processes_with_their_own_keys_all_land_in_the_ring(stack) -> None:
    """Compose gives each consumer its own data volume, hence its own key: each adds it."""
    from rollout_engine.engine.sdk.signatures import KV_KEY, KeyRing

    _, _, js = stack
    signers = [CommandSigner.ephemeral() for _ in range(4)]
    assert all(await asyncio.gather(*(publish_keys(js, s.ring) for s in signers)))
    kv = await js.key_value(subjects.STATE_BUCKET)
    held = KeyRing.decode((await kv.get(KV_KEY)).value)
    assert {k.id for k in held.keys} == {s.key_id for s in signers}, "concurrent adds lose no key"
    assert await publish_keys(js, signers[0].ring, replace=True)
    assert [k.id for k in KeyRing.decode((await kv.get(KV_KEY)).value).keys] == [signers[0].key_id]
