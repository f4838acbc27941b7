"""Properties of the rollback fold over generated traffic: determinism, restartability,
and commands that always pass the contract (a kill a service cannot decode is no kill)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, policy_change, runs
from rollout_engine.engine.stack.ticks import make_tick
from rollout_engine.events import Event, decode, encode

profiles = st.builds(
    Profile,
    quality=st.floats(0, 100),
    latency_ms=st.floats(0, 1e9),
    cost_cents=st.floats(-1e6, 1e11),
)
policies = st.sampled_from([
    None,
    {"hysteresis": {"sustain_ms": 300, "min_failures": 2, "check_interval_ms": 100}},
    {"staged": {"steps": [25, 0]}, "hysteresis": {"hold_down_ms": 500}},
    {"name": "s", "dry_run": True, "thresholds": {"max_quality_drop": 0.5}},
    {"guards": [{"name": "ratio", "metric": "latency_ms", "mode": "ratio", "threshold": 1.2,
                 "test": "mann_whitney"},
                {"name": "seq", "metric": "cost_cents", "mode": "increase", "threshold": 0.1,
                 "test": "sequential"}]},
    {"progression": {"enabled": True, "interval_ms": 200, "healthy_intervals": 1, "min_samples": 3}},
])


def _log(policy: dict | None, phases: list[tuple[Profile, Profile, int, float]]) -> list[Event]:
    log: list[Event] = [] if policy is None else [policy_change("r", policy, canary_pct=50.0)]
    start = 0
    for baseline, candidate, n, pct in phases:
        log += runs("r", n, canary_pct=pct, baseline=baseline, candidate=candidate, start=start)
        start += n
        log.append(make_tick(T0 + start * 10 + 250, 250))
    return log


def _fold(p: RollbackProjection, log: list[Event], start: int = 1) -> list[bytes]:
    out: list[bytes] = []
    for seq, event in enumerate(log, start):
        for command in p.apply(event, seq):
            out.append(encode(command))
            p.apply(command, seq)
    return out


phase_lists = st.lists(st.tuples(profiles, profiles, st.integers(1, 80), st.sampled_from([5.0, 50.0, 95.0])),
                       min_size=1, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, phases=phase_lists, cut=st.floats(0, 1))
def test_fold_is_deterministic_restartable_and_emits_valid_commands(policy, phases, cut) -> None:
    log = _log(policy, phases)
    whole = RollbackProjection()
    commands = _fold(whole, log)
    assert _fold(RollbackProjection(), log) == commands  # same log, same bytes
    for data in commands:
        assert encode(decode(data)) == data  # every command passes the contract's validation
    at = int(cut * len(log))
    head = RollbackProjection()
    first = _fold(head, log[:at])
    resumed = RollbackProjection()
    resumed.restore(head.snapshot())
    assert first + _fold(resumed, log[at:], start=at + 1) == commands
    assert resumed.snapshot() == whole.snapshot()
