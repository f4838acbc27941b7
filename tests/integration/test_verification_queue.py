"""The verification queue through a real nats-server: re-check requests on
``ro.ctl.<rollout>.recheck`` at exact event times driven by ``ro.tick``, expiry and
resolution on ``recheck_closed``, one copy of each after a re-fold, gauges updated."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from rollout_engine.consumers.verification_consumer import build as build_verification
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import (
    Outcome,
    RecheckClosed,
    RecheckRequest,
    Tick,
    decode,
    encode,
    subjects,
)

T0 = 1_700_000_000_000
S = 1_000
R = "verify-loop"




def outcome(decision: str, t: int, verdict: str = "inconclusive", confidence: float | None = None) -> Outcome:
    return Outcome(id=f"o-{decision}-{t}", rollout=R, time_ms=t, producer="svc", decision_id=decision,
                   variant="candidate", verdict=verdict, confidence=confidence)


async def fold(settings: object, nc: object):  # type: ignore[no-untyped-def]
    runner = consumer_runner(build_verification(settings), settings, nc=nc, until_idle=True, fetch_timeout=0.1)  # type: ignore[arg-type]
    return await runner.run()


async def control_events(js: object) -> list[object]:
    out = []
    info = await js.stream_info(subjects.LOG_STREAM)  # type: ignore[attr-defined]
    for seq in range(1, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)  # type: ignore[attr-defined]
        if msg.subject.startswith(f"ro.ctl.{R}."):
            out.append((msg.subject, decode(msg.data)))
    return out


async def test_rechecks_follow_ticks_exactly_then_expire_or_resolve_once(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    await js.publish(subjects.event(R, "outcome"), encode(outcome("d-weak", T0, "win", confidence=0.3)))
    await js.publish(subjects.event(R, "outcome"), encode(outcome("d-unsure", T0 + 100 * S)))
    for t in range(T0, T0 + 1300 * S, 50 * S):  # a tick every 50 s of event time
        await js.publish(subjects.TICK, encode(Tick(id=f"tick-{t}", time_ms=t, producer="engine")))
        if t == T0 + 500 * S:
            await js.publish(subjects.event(R, "outcome"), encode(outcome("d-unsure", t, "loss", confidence=0.99)))
    first = await fold(settings, nc)
    (Path(settings.data_dir) / "consumers" / "verification.sqlite").unlink()
    again = await fold(settings, nc)
    assert again.digest == first.digest, "replay reproduces the queue bit for bit"
    emitted = await control_events(js)
    requests = [(e.decision_id, e.attempt, e.time_ms) for _, e in emitted if isinstance(e, RecheckRequest)]
    assert requests == [
        ("d-weak", 1, T0 + 300 * S), ("d-unsure", 1, T0 + 400 * S), ("d-weak", 2, T0 + 600 * S),
        ("d-weak", 3, T0 + 900 * S),
    ], "one copy of each despite the re-fold (deterministic ids, Nats-Msg-Id)"
    closed = [(s, e.decision_id, e.status, e.time_ms) for s, e in emitted if isinstance(e, RecheckClosed)]
    assert closed == [
        (subjects.control(R, "recheck_closed"), "d-unsure", "resolved", T0 + 500 * S),
        (subjects.control(R, "recheck_closed"), "d-weak", "expired", T0 + 1200 * S),
    ]
    assert all(s == subjects.control(R, "recheck") for s, e in emitted if isinstance(e, RecheckRequest))
    assert REGISTRY.get_sample_value("rollout_recheck_pending", {"rollout": R}) == 0


async def test_queue_depth_and_oldest_age_gauges_follow_the_fold(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, js = stack
    for i in range(3):
        await js.publish(subjects.event(R, "outcome"), encode(outcome(f"d{i}", T0 + i * 10 * S)))
    await js.publish(subjects.TICK, encode(Tick(id="tick-1", time_ms=T0 + 60 * S, producer="engine")))
    await fold(settings, nc)
    assert REGISTRY.get_sample_value("rollout_recheck_pending", {"rollout": R}) == 3
    assert REGISTRY.get_sample_value("rollout_recheck_oldest_age_seconds", {"rollout": R}) == 60.0
