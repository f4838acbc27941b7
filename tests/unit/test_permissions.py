"""The permission table covers every durable the engine may create, partitioned or not,
and the API answers any body with a 4xx and a reason."""

from __future__ import annotations

import msgspec
import pytest

from rollout_engine.consumers import registry
from rollout_engine.consumers.runtime import store_name
from rollout_engine.engine.api.requests import MAX_BODY_BYTES, MAX_DEPTH, ApiError, parse_body
from rollout_engine.engine.stack.security import render_authorization, roles
from rollout_engine.events import subjects


@pytest.mark.parametrize("partitions", [0, 2, 7])
def test_readers_are_denied_every_engine_durable_of_the_log(partitions: int) -> None:
    table = roles(partitions)
    for reader in ("service", "app"):
        denied = set(table[reader].deny_publish)
        for name in registry.names():
            for partition in (None, *range(partitions)):
                durable = store_name(name, partition)
                assert f"$JS.API.CONSUMER.CREATE.{subjects.LOG_STREAM}.{durable}.>" in denied, (reader, durable)
                assert f"$JS.API.CONSUMER.INFO.{subjects.LOG_STREAM}.{durable}" in denied, (reader, durable)
    assert "rollback_p1" in render_authorization({"service": "x"}, partitions=2)
    assert "rollback_p1" not in render_authorization({"service": "x"}, partitions=1)


@pytest.mark.parametrize(("data", "code", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, 400, "deeper than"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "deeper than"),
    (b'{"policy": {"a": ' + b"[" * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH + b"}}", 400, "deeper than"),
    (b'{"reason": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}', 413, "at most"),
    (b"\xff", 400, "not valid JSON"),
])
def test_any_body_gets_a_4xx_with_a_reason(data: bytes, code: int, reason: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_body(data)
    assert refused.value.code == code and reason in refused.value.message


def test_a_policy_within_the_depth_limit_is_accepted() -> None:
    nested: object = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert parse_body(msgspec.json.encode({"policy": nested}))["policy"] == nested
