"""The deployment gate's verdict rules and its per-client rate limit, with no I/O."""

from __future__ import annotations

from rollout_engine.engine.api.control_log import ControlView
from rollout_engine.engine.api.gate import RateLimiter
from rollout_engine.engine.api.verdict import judge
from rollout_engine.events import Breach, ControlState, KillSwitch

LIVE = ControlState(canary_pct=20, config_version=3)


def _view(state: ControlState = LIVE, command: object = None) -> ControlView:
    return ControlView("r", state, command, 7, 7)  # type: ignore[arg-type]


def _evaluation(**guards: dict) -> dict:
    return {"now_ms": 5, "guards": guards, "escalations": []}


OK = {"state": "ok", "inconclusive": 0}


def test_every_guard_passing_advances() -> None:
    v = judge(_view(), _evaluation(quality=OK, latency=OK))
    assert (v.verdict, v.canary_pct, v.control_seq) == ("advance", 20, 7)
    assert v.body(checked_ms=1)["healthy"] is True


def test_kill_switch_halts_with_its_breaches_whatever_the_guards_say() -> None:
    killed = ControlState(canary_pct=0, kill_switch=True, config_version=3)
    kill = KillSwitch(id="k", rollout="r", time_ms=1, producer="rollback", actor="rollback", reason="quality drop",
                      before=LIVE, after=killed, breaches=[Breach(guard="quality", observed=10, threshold=5)])
    v = judge(_view(killed, kill), _evaluation(quality=OK))
    assert v.verdict == "halt" and v.reason == "kill switch: quality drop"
    assert v.breaches[0]["guard"] == "quality"
    assert judge(_view(killed), None).verdict == "halt"  # no evaluation needed to halt


def test_a_guard_in_alarm_or_recovering_halts_before_any_kill() -> None:
    assert judge(_view(), _evaluation(quality={"state": "alarm"}, latency=OK)).verdict == "halt"
    assert judge(_view(), _evaluation(quality={"state": "recovering"})).verdict == "halt"


def test_missing_or_unsure_evidence_is_inconclusive_never_a_failure() -> None:
    assert judge(_view(), None).verdict == "inconclusive"
    assert judge(_view(), {"guards": {}}).verdict == "inconclusive"
    assert judge(_view(), _evaluation(quality={"state": "pending"})).verdict == "inconclusive"
    assert judge(_view(), _evaluation(quality={"state": "ok", "inconclusive": 3})).verdict == "inconclusive"
    # A configured rollout with no traffic lists every guard short of its minimum sample.
    for judged in ("insufficient", "not judged", "inconclusive"):
        short = {"state": "ok", "inconclusive": 0, "judged": judged, "n": 0, "need": 30}
        assert judge(_view(), _evaluation(quality=short)).verdict == "inconclusive", judged
    assert judge(_view(), _evaluation(quality={**OK, "judged": "ok", "n": 30, "need": 30})).verdict == "advance"
    armed = {**_evaluation(quality=OK), "escalations": ["quality"]}
    assert judge(_view(), armed).verdict == "inconclusive"


def test_rate_limiter_allows_a_burst_then_the_rate_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.wait_s("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("a") == 0.5  # a token every 0.5 s
    assert limiter.wait_s("b") == 0.0  # another client has its own bucket
    now[0] = 0.5
    assert limiter.wait_s("a") == 0.0


def test_rate_limiter_keeps_bounded_memory_under_many_addresses() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=100)
    for i in range(1000):
        limiter.wait_s(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100
