"""Bad input never stops a consumer: each bad item lands in dead letters with its reason."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from rollout_engine.consumers.canary_stats import CanaryStats
from rollout_engine.consumers.consumer import Consumer
from rollout_engine.consumers.deadletter import decode_dead_letter
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.consumer_metrics import default_metrics
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import Metric, encode, encode_batch, subjects

T0 = 1_700_000_000_000


def metric(n: int, value: float = 1.0) -> Metric:
    return Metric(id=f"m{n}", rollout="dl", time_ms=T0 + n, producer="test", variant="candidate",
                  name="latency_ms", value=value)


def raw(**fields: object) -> bytes:
    base = {"kind": "metric", "id": "x1", "rollout": "dl", "time_ms": T0, "producer": "test",
            "variant": "candidate", "name": "latency_ms", "value": 1.0}
    return msgspec.msgpack.encode(base | fields)


BAD = {
    "garbage": (b"\xc1\xff\x00not msgpack at all", "payload"),
    "wrong schema version": (raw(v=99), "$.v"),
    "NaN": (raw(value=math.nan), "$.value"),
    "2 MB payload": (raw(producer="p", unit="x" * (2 * 1024 * 1024)), "payload"),
    "unknown kind": (raw(kind="teleport"), "$.kind"),
}


async def test_bad_messages_are_dead_lettered_with_their_reason_and_valid_ones_projected(
    fresh_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = load_settings(env={}, nats_url=fresh_server.url, data_dir=str(tmp_path / "data"))
    nc = await connect(settings, name="test")
    js = nc.jetstream()
    await provision(js, settings)
    subject = subjects.event("dl", "metric")
    for n, (payload, _) in enumerate(BAD.values()):
        await js.publish(subject, encode(metric(n)))
        await js.publish(subject, payload)
    # a batch with one bad item: the good items around it are folded
    mixed = msgspec.msgpack.encode([msgspec.msgpack.decode(encode(metric(100))), {"kind": "metric", "id": "bad"},
                                    msgspec.msgpack.decode(encode(metric(101)))])
    await js.publish(subject, mixed)
    await js.publish(subject, encode_batch([metric(200), metric(201)]))
    before = default_metrics().dead.labels("canary_stats", "payload")._value.get()
    missing = default_metrics().dead.labels("canary_stats", "$.variant")._value.get()

    summary = await consumer_runner(Consumer(CanaryStats()), settings, nc=nc, until_idle=True).run()

    assert summary.dead_letters == len(BAD) + 1
    assert default_metrics().dead.labels("canary_stats", "payload")._value.get() - before == 2  # garbage, 2 MB
    assert default_metrics().dead.labels("canary_stats", "$.variant")._value.get() - missing == 1  # the batch item
    sub = await js.pull_subscribe(subjects.dlq("canary_stats"), stream=subjects.DLQ_STREAM,
                                  config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    msgs = await sub.fetch(20, timeout=2)
    letters = [decode_dead_letter(m.data) for m in msgs]
    assert len(letters) == len(BAD) + 1
    sent = {payload: (name, field) for name, (payload, field) in BAD.items()}
    for letter, msg in zip(letters[: len(BAD)], msgs, strict=False):
        name, field = sent[letter.data]  # the original bytes, unchanged
        assert letter.field == field, name
        assert letter.index == -1 and letter.subject == subject and letter.reason
        assert msg.headers["Ro-Stream-Seq"] == str(letter.seq) and msg.headers["Ro-Reason"]
    assert "newer than" in letters[1].reason and "unknown event kind" in letters[4].reason
    assert "1048576-byte limit" in letters[3].reason
    item = letters[-1]
    assert item.index == 1 and item.reason.startswith("item 1:")
    stats = await _stored(settings)
    view = stats.view("dl", "all")["candidate"].metrics["latency_ms"]
    assert view.n == len(BAD) + 4  # every valid event, none of the bad ones
    await nc.close()


async def _stored(settings) -> CanaryStats:  # type: ignore[no-untyped-def]
    """The committed state, read back from the consumer's SQLite store."""
    from rollout_engine.consumers.store import SQLiteConsumerStore

    async with SQLiteConsumerStore.for_consumer(settings.data_dir, "canary_stats", exclusive=False) as store:
        stored = await store.load()
    stats = CanaryStats()
    stats.restore_parts(stored.parts)
    return stats


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_payload_is_rejected_by_the_codec(name: str) -> None:
    from rollout_engine.events import decode_lenient

    payload, field = BAD[name]
    good, rejected = decode_lenient(payload)
    assert good == [] and rejected[0].error.field == field
