"""Hostile messages on the log itself (a producer with publish rights and bad intent):
every registered consumer dead-letters them with a reason and folds the rest.

``test_consumer_deadletters.py`` covers garbage, versions, kinds and the 1 MiB limit for
canary stats; here every consumer meets poison nesting (which once crashed the decoder
with ``RecursionError``, forever, at each restart), ids carrying subject syntax, and a
payload just above the limit, between valid events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rollout_engine.consumers import registry
from rollout_engine.engine.settings import Settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import encode_batch, subjects
from rollout_engine.events.codec import MAX_MESSAGE_BYTES
from tests.integration.faultkit import batch, clean_fold, last_seq, spawn

HOSTILE = [
    b"\x91" * 200_000,  # poison nesting, 200 kB
    msgspec.msgpack.encode({"kind": "metric", "v": 1, "id": "x", "rollout": "ro.ctl.victim.kill_switch", "time_ms": 1,
                            "producer": "p", "variant": "candidate", "name": "latency_ms", "value": 1.0}),
    msgspec.msgpack.encode({"kind": "metric", "v": 1, "id": "x", "rollout": "victim", "time_ms": 1,
                            "producer": "p>", "variant": "*", "name": "a.b", "value": 1.0}),
    b"\x00" * (MAX_MESSAGE_BYTES + 1),
]


@pytest.mark.timeout(120)
async def test_every_consumer_dead_letters_hostile_messages_and_folds_the_rest(
    fresh_server: EmbeddedServer, stack: tuple[Settings, Any, Any]
) -> None:
    settings, _nc, js = stack  # own server, provisioned; closed by the fixture
    data_dir = Path(settings.data_dir)
    good = 0
    for n, payload in enumerate(HOSTILE):
        subject, events = batch(n, "victim")
        await js.publish(subject, encode_batch(events))
        good += len(events)
        await js.publish(subjects.event("victim", "metric"), payload)
    subject, events = batch(len(HOSTILE), "victim")
    await js.publish(subject, encode_batch(events))
    last = await last_seq(js)

    for name in registry.names():
        proc = await spawn(fresh_server.url, data_dir, name, "--until-idle", "--json")
        out, _ = await proc.communicate()
        assert proc.returncode == 0, (data_dir / f"{name}.stderr").read_text()[-2000:]
        result = json.loads(out)
        assert result["seq"] == last and result["dead_letters"] == len(HOSTILE), (name, result)
        expected, folded = await clean_fold(js, name, settings, last)
        assert result["digest"] == expected
    dlq = await js.stream_info(subjects.DLQ_STREAM)
    assert dlq.state.messages == len(HOSTILE) * len(registry.names())
    assert folded == good + len(events)
