"""The operator API against a real nats-server: every endpoint, the audit trail, refusals."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.api.control_log import known_rollouts, read_control
from rollout_engine.events import ConfigChange, KillSwitch, Metric, Resume, decode, encode, subjects
from rollout_engine.events.ids import new_event_id


async def _control_messages(js, rollout: str) -> list:
    counts = (await known_rollouts(js, rollout)).get(rollout, {})
    return {k: v for k, v in counts.items() if k in ("kill_switch", "resume", "config")}


async def _seed(js, rollout: str) -> None:
    event = Metric(id=new_event_id(), rollout=rollout, time_ms=1_000, producer="svc", variant="candidate",
                   name="latency_ms", value=12.0)
    await js.publish(subjects.event(rollout, "metric"), encode(event))


async def test_config_kill_resume_are_audited_commands_on_the_log(api, rollout_id) -> None:
    nc, js = api
    reply = await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 5, "create": True,
                                      "reason": "initial canary"})
    assert reply["changed"] and reply["before"]["canary_pct"] == 0 and reply["after"]["canary_pct"] == 5
    killed = await call(nc, "abort", {"rollout": rollout_id, "actor": "bob", "reason": "quality drop"})
    assert killed["after"]["kill_switch"] is True and killed["after"]["canary_pct"] == 0
    assert killed["before"]["canary_pct"] == 5
    again = await call(nc, "rollback", {"rollout": rollout_id, "actor": "bob", "reason": "again"})
    assert again["changed"] is False
    resumed = await call(nc, "resume", {"rollout": rollout_id, "actor": "carol", "reason": "fixed"})
    assert resumed["after"] == {**resumed["before"], "kill_switch": False, "canary_pct": 5.0,
                                "config_version": resumed["before"]["config_version"] + 1}

    msgs = [await js.get_last_msg(subjects.LOG_STREAM, subjects.control(rollout_id, k))
            for k in ("config", "kill_switch", "resume")]
    config, kill, resume = (decode(m.data) for m in msgs)
    assert isinstance(config, ConfigChange) and config.actor == "alice" and config.reason == "initial canary"
    assert isinstance(kill, KillSwitch) and kill.actor == "bob" and "quality drop" in kill.reason
    assert kill.before == config.after
    assert isinstance(resume, Resume) and resume.actor == "carol" and resume.before == kill.after
    assert (await read_control(js, rollout_id)).state == resume.after


async def test_bad_input_is_refused_and_changes_nothing(api, rollout_id) -> None:
    nc, js = api
    with pytest.raises(ApiError) as unknown:
        await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 5})
    assert unknown.value.code == 404 and "unknown rollout" in unknown.value.message
    await _seed(js, rollout_id)
    before = await _control_messages(js, rollout_id)
    bad = [
        ("config", {"rollout": rollout_id, "canary_pct": 5}, "operator identity"),
        ("config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 150}, "out of range"),
        ("config", {"rollout": rollout_id, "actor": "alice", "canary_pct": "ten"}, "expected a number"),
        ("config", {"rollout": rollout_id, "actor": "alice", "policy": {"thresholds": {"max_quality_drop": "x"}}},
         "policy"),
        ("config", {"rollout": rollout_id, "actor": "alice", "colour": "red"}, "unknown field"),
        ("config", {"rollout": "bad.rollout", "actor": "alice", "canary_pct": 5}, "rollout"),
        ("rollback", {"rollout": rollout_id, "actor": "alice"}, "say why"),
        ("rollback", {"rollout": rollout_id, "reason": "x"}, "operator identity"),
        ("rollback", {"rollout": rollout_id, "actor": "alice", "reason": "x" * 1001}, "at most 1000"),
        ("rollback", {"rollout": rollout_id, "actor": "a.b", "reason": "x"}, "actor"),
        ("resume", {"rollout": rollout_id, "actor": "alice"}, "not killed"),
        ("status", {"rollout": "nope-" + rollout_id}, "unknown rollout"),
    ]
    for endpoint, payload, expected in bad:
        with pytest.raises(ApiError) as err:
            await call(nc, endpoint, payload)
        assert expected in err.value.message, (endpoint, payload, err.value.message)
        assert 400 <= err.value.code < 500
    raw = await nc.request(subjects.api("config"), b"{not json", timeout=5)
    assert raw.headers["Nats-Service-Error-Code"] == "400"
    assert "valid JSON" in json.loads(raw.data)["error"]
    assert await _control_messages(js, rollout_id) == before == {}


async def test_concurrent_changes_chain_before_and_after(api, rollout_id) -> None:
    nc, js = api
    await _seed(js, rollout_id)
    pcts = [1, 2, 3, 4, 5, 6]
    replies = await asyncio.gather(*(call(nc, "config", {"rollout": rollout_id, "actor": "ops", "canary_pct": p})
                                     for p in pcts))
    assert all(r["changed"] for r in replies)
    chain = sorted(replies, key=lambda r: r["command"]["seq"])
    for prev, nxt in itertools.pairwise(chain):
        assert nxt["before"] == prev["after"]
    assert [r["after"]["config_version"] for r in chain] == list(range(1, 7))


async def test_retried_request_is_stored_once(api, rollout_id) -> None:
    nc, js = api
    await _seed(js, rollout_id)
    payload = {"rollout": rollout_id, "actor": "ops", "canary_pct": 7, "request_id": "req-1"}
    first = await call(nc, "config", payload)
    second = await call(nc, "config", payload)
    assert first["changed"] and not second["changed"]
    assert (await _control_messages(js, rollout_id)) == {"config": 1}


async def test_status_health_and_discovery(api, rollout_id) -> None:
    nc, js = api
    await _seed(js, rollout_id)
    await call(nc, "abort", {"rollout": rollout_id, "actor": "ops", "reason": "manual test"})
    status = await call(nc, "status", {"rollout": rollout_id})
    assert status["control"]["kill_switch"] is True
    assert status["last_command"]["actor"] == "ops" and status["last_command"]["kind"] == "kill_switch"
    assert status["counts"]["metric"] == 1
    assert status["thresholds"]["thresholds"]
    overview = await call(nc, "status", {"prefix": rollout_id})  # the session server lists other tests' too
    assert any(r["rollout"] == rollout_id and r["control"]["kill_switch"] and r["phase"] == "aborted"
               for r in overview["rollouts"])
    health = await call(nc, "health")
    assert health["ok"] is True and health["log"]["last_seq"] >= 1
    ping = await nc.request("$SRV.PING.rollout-api", b"", timeout=5)
    assert json.loads(ping.data)["name"] == "rollout-api"
    info = json.loads((await nc.request("$SRV.INFO.rollout-api", b"", timeout=5)).data)
    assert {e["subject"] for e in info["endpoints"]} >= {subjects.api(n) for n in ("status", "rollback", "config")}


async def test_evaluate_judges_now_and_kills_what_the_log_lacks(api, rollout_id) -> None:
    import time as _time

    from rollout_engine.consumers.rollback.scenario import Profile, runs
    from rollout_engine.events.message import log_messages

    nc, js = api
    await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 50, "create": True})
    events = runs(rollout_id, 120, canary_pct=50, candidate=Profile(quality=80.0), t0=int(_time.time() * 1000) + 5_000)
    for subject, payload in log_messages(events, 40):
        await js.publish(subject, payload)
    dry = await call(nc, "evaluate", {"rollout": rollout_id, "act": False}, timeout=30)
    assert dry["would_kill"] and not dry["killed_now"] and "quality" in dry["reasons"][0]
    assert not (await read_control(js, rollout_id)).state.kill_switch
    done = await call(nc, "evaluate", {"rollout": rollout_id}, timeout=30)
    assert done["killed_now"] and (await read_control(js, rollout_id)).state.kill_switch
    again = await call(nc, "evaluate", {"rollout": rollout_id}, timeout=30)
    assert not again["killed_now"] and again["evaluation"]["kill_switch"]
    dry = await call(nc, "evaluate", {"rollout": rollout_id, "act": False}, timeout=30)  # killed: say by whom, why
    assert dry["would_kill"] and dry["reasons"][0].startswith("killed by rollback: quality")
    assert dry["reasons"][1].startswith("breaching now: ") and "quality" in dry["reasons"][1]
    with pytest.raises(ApiError) as err:
        await call(nc, "evaluate", {"rollout": "nope-" + rollout_id})
    assert err.value.code == 404


async def test_a_preset_goes_into_the_log_expanded(api, rollout_id) -> None:
    """The log records every number of a preset, not its name (a later release could change it)."""
    from rollout_engine.consumers.rollback.policy import load_policy

    nc, js = api
    reply = await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 5, "create": True,
                                      "policy": {"preset": "recommended", "name": "checkout"}})
    assert reply["changed"] and reply["after"]["policy_version"] == 1
    config = decode((await js.get_last_msg(subjects.LOG_STREAM, subjects.control(rollout_id, "config"))).data)
    assert isinstance(config, ConfigChange) and "preset" not in config.policy
    assert config.policy["name"] == "checkout" and len(config.policy["guards"]) == 3
    assert load_policy(config.policy) == load_policy({"preset": "recommended", "name": "checkout", "version": 1})
    with pytest.raises(ApiError, match="unknown preset"):
        await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "policy": {"preset": "fastest"}})
