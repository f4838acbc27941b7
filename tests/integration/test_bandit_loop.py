"""The policy bandit through a real nats-server: config and decisions in the log, the
``bandit`` consumer on the runtime, views in KV, choose() from a KV watch, cooldown
events relayed once, and a re-fold from scratch giving the same state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rollout_engine.consumers.bandit.consumer import build as build_bandit
from rollout_engine.engine.sdk.choice import BanditChooser
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import (
    BanditConfig,
    Event,
    Guardrail,
    Outcome,
    decode,
    decode_message,
    encode,
    encode_batch,
    subjects,
)

T0 = 1_700_000_000_000
R = "bandit-loop"
PROBS = {"a": 0.2, "b": 0.4, "c": 0.8}




async def publish(js: object, events: list[Event], kind: str) -> None:
    for start in range(0, len(events), 100):
        batch = events[start:start + 100]
        await js.publish_async(subjects.event(R, kind), encode_batch(batch))  # type: ignore[attr-defined]
    await js.publish_async_completed()  # type: ignore[attr-defined]


async def fold(settings: object, nc: object):  # type: ignore[no-untyped-def]
    runner = consumer_runner(build_bandit(settings), settings, nc=nc, until_idle=True, fetch_timeout=0.1)  # type: ignore[arg-type]
    return await runner.run()


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_bandit_learns_through_the_log_and_choose_follows_the_kv_view(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    config = BanditConfig(id="cfg-1", rollout=R, time_ms=T0, producer="cli", actor="alice", reason="learn",
                          bandit={"arms": ["a", "b", "c"], "min_samples": 10, "floor": 0.02})
    await js.publish(subjects.control(R, "bandit_config"), encode(config), headers={"Nats-Msg-Id": config.id})
    await fold(settings, nc)
    chooser = BanditChooser()
    await chooser.watch(js, R)
    assert chooser.views[R].weights[""] == [pytest.approx(1 / 3)] * 3, "uniform before the minimum sample"
    rng = np.random.default_rng(4)
    for rnd in range(6):
        decisions, outcomes = [], []
        for i in range(150):
            now = T0 + (rnd * 150 + i) * 1000
            choice = chooser.choose(R, f"u{i}", decision_id=f"r{rnd}-{i}", time_ms=now)
            decisions.append(chooser.decision(choice, producer="svc"))
            won = bool(rng.random() < PROBS[choice.variant])
            outcomes.append(Outcome(id=f"o{rnd}-{i}", rollout=R, time_ms=now + 200, producer="svc",
                                    decision_id=choice.decision_id, variant=choice.variant,
                                    verdict="win" if won else "loss"))
        await publish(js, decisions, "decision")
        await publish(js, outcomes, "outcome")
        seq_before = chooser.views[R].seq
        summary = await fold(settings, nc)
        await wait_for(lambda seq=seq_before: chooser.views[R].seq > seq)
    view = chooser.views[R]
    assert view.warm and view.weights[""][2] > 0.8, view.weights
    tail = [chooser.choose(R, "u", decision_id=f"t{i}", time_ms=T0).variant for i in range(1000)]
    assert tail.count("c") > 800
    # Replay: a fresh fold of the same log from sequence 1 reproduces the state bit for bit.
    (Path(settings.data_dir) / "consumers" / "bandit.sqlite").unlink()
    again = await fold(settings, nc)
    assert again.digest == summary.digest and again.seq == summary.seq
    await chooser.close()


async def test_a_normal_mode_loss_publishes_one_cooldown_even_when_refolded(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    config = BanditConfig(id="cfg-2", rollout=R, time_ms=T0, producer="cli", actor="alice", reason="learn",
                          bandit={"arms": ["safe-a", "safe-b"]})
    await js.publish(subjects.control(R, "bandit_config"), encode(config))
    await fold(settings, nc)
    chooser = BanditChooser()
    await chooser.watch(js, R)
    choice = chooser.choose(R, "u1", decision_id="n1", time_ms=T0 + 10, mode="normal", priority=0.95)
    assert choice.mode == "normal"
    await publish(js, [chooser.decision(choice, producer="svc")], "decision")
    await publish(js, [Outcome(id="loss-1", rollout=R, time_ms=T0 + 20, producer="svc", decision_id="n1",
                               variant=choice.variant, verdict="loss")], "outcome")
    first = await fold(settings, nc)
    (Path(settings.data_dir) / "consumers" / "bandit.sqlite").unlink()
    await fold(settings, nc)  # emits the same cooldown again; JetStream drops the duplicate id
    await wait_for(lambda: chooser.views[R].guardrail.cooldown_until_ms > 0)
    sub = await js.subscribe(subjects.control(R, "guardrail"), deliver_policy="all", ordered_consumer=True)
    msg = await sub.next_msg(timeout=2)
    cooldown = decode(msg.data)
    assert isinstance(cooldown, Guardrail) and cooldown.cause_id == "loss-1"
    assert cooldown.after.cooldown_until_ms == T0 + 20 + 1_800_000
    with pytest.raises(asyncio.TimeoutError):
        await sub.next_msg(timeout=0.3)
    await sub.unsubscribe()
    later = chooser.choose(R, "u2", decision_id="n2", time_ms=T0 + 3_600_000 - 1, mode="normal", priority=0.95)
    assert later.reason == "forced_safe"
    final = await fold(settings, nc)
    assert final.digest == first.digest, "the relayed echo of our own cooldown changes nothing"
    await chooser.close()


async def test_rollout_client_choose_logs_the_decision_with_reason_and_propensity(stack) -> None:  # type: ignore[no-untyped-def]
    from rollout_engine.engine.sdk.choice import NoBanditState
    from rollout_engine.engine.sdk.client import RolloutClient

    settings, nc, js = stack
    async with RolloutClient(settings, producer="svc") as client:
        with pytest.raises(NoBanditState, match="rollout bandit config"):
            await client.choose(R, "user-1")
        config = BanditConfig(id="cfg-3", rollout=R, time_ms=T0, producer="cli", actor="alice", reason="learn",
                              bandit={"arms": ["a", "b"]})
        await js.publish(subjects.control(R, "bandit_config"), encode(config))
        await fold(settings, nc)
        await wait_for(lambda: R in client.__dict__["_bandit"].views)
        choice = await client.choose(R, "user-1", mode="normal", priority=0.99)
        assert choice.reason == "bandit" and choice.propensity == pytest.approx(0.5) and choice.mode == "normal"
        await client.flush()
    await fold(settings, nc)
    last = (await js.stream_info(subjects.LOG_STREAM)).state.last_seq
    logged = [e for s in range(1, last + 1) for e in decode_message((await js.get_msg(subjects.LOG_STREAM, s)).data)]
    decision = next(e for e in logged if e.id == choice.decision_id)
    assert (decision.reason, decision.variant, decision.dry_run) == ("bandit", choice.variant, False)
    assert decision.propensity == pytest.approx(0.5)
