"""Deterministic logs for the fold-equivalence test (test_rollback_fold_golden.py).

Every id is derived from the log's own random generator, so a log is the same bytes in
every process: the digests and commands folded from it are comparable across code
versions. The logs cover what the incremental windows must reproduce exactly: ties,
values equal to a threshold, time windows moved by ticks, out-of-order event times,
kills and resumes, statistical guards, dry-run policies, SRM.
"""

from __future__ import annotations

import random

from rollout_engine.events import (
    ControlState,
    Decision,
    Event,
    Metric,
    Outcome,
    Tick,
    transitions,
)

T0 = 1_700_000_000_000

POLICIES: list[dict | None] = [
    None,
    {"thresholds": {"max_quality_drop": 5.0, "max_latency_p95_ms": 1000.0, "max_cost_cents": 3.0},
     "hysteresis": {"sustain_ms": 300, "min_failures": 2, "check_interval_ms": 100}},
    {"guards": [{"name": "lat99", "metric": "latency_ms", "aggregate": "p99", "window": "time", "threshold": 1000.0},
                {"name": "err", "metric": "error", "aggregate": "rate", "window": "time", "threshold": 0.1},
                {"name": "all95", "metric": "latency_ms", "aggregate": "p95", "window": "all", "threshold": 1500.0}],
     "window_ms": 2_000},
    {"guards": [{"name": "ratio", "metric": "latency_ms", "mode": "ratio", "threshold": 1.2, "test": "mann_whitney"},
                {"name": "seq", "metric": "cost_cents", "mode": "increase", "threshold": 0.1, "test": "sequential"}],
     "last_n": 40},
    {"name": "s", "dry_run": True, "thresholds": {"max_quality_drop": 0.5},
     "guards": [{"name": "p50", "metric": "latency_ms", "aggregate": "p50", "window": "time", "threshold": 900.0}]},
    {"guards": [{"name": "q", "metric": "quality", "mode": "decrease", "window": "time", "threshold": 2.0,
                 "recovery_threshold": 1.0}], "window_ms": 1_500, "hysteresis": {"hold_down_ms": 200,
                 "recovery_sustain_ms": 200}},
]


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self.rng, self.n = rng, 0

    def __call__(self, t: int) -> str:
        self.n += 1
        return f"{t:012x}{self.rng.getrandbits(32):08x}{self.n:08x}"


def log(seed: int, events: int = 6_000, rollouts: int = 3) -> list[Event]:
    """A deterministic mixed log of about ``events`` events over ``rollouts`` rollouts."""
    rng = random.Random(seed)
    ids = _Ids(rng)
    out: list[Event] = []
    state: dict[str, ControlState] = {}
    bad: dict[str, float] = {}
    t = T0
    for r in range(rollouts):
        name = f"r{r}"
        state[name] = ControlState()
        policy = POLICIES[(seed + r) % len(POLICIES)]
        change = transitions.config_command(state[name], id=ids(t), rollout=name, time_ms=t, producer="sim",
                                            actor="operator", reason="policy", canary_pct=rng.choice([20.0, 50.0]),
                                            policy=policy)
        state[name] = change.after
        out.append(change)
        bad[name] = 0.0
    while len(out) < events:
        t += rng.choice([1, 3, 10, 40])
        if rng.random() < 0.01:
            out.append(Tick(id=f"tick-{t}", time_ms=t, producer="engine"))
            continue
        name = f"r{rng.randrange(rollouts)}"
        if rng.random() < 0.003:
            bad[name] = rng.choice([0.0, 1.0, 3.0])  # the candidate turns bad, or recovers
        control = state[name]
        et = t - (rng.randrange(500) if rng.random() < 0.05 else 0)  # some out-of-order event times
        variant = "candidate" if rng.random() < 0.4 else "baseline"
        harm = bad[name] if variant == "candidate" else 0.0
        kind = rng.random()
        common = {"id": ids(et), "rollout": name, "time_ms": et, "producer": "sim"}
        if kind < 0.2:
            out.append(Decision(unit=f"u{rng.randrange(1000)}", variant=variant, reason="canary",
                                canary_pct=control.canary_pct or 20.0, config_version=1, propensity=0.2, **common))
        elif kind < 0.45:
            quality = rng.choice([90.0, 95.0, 85.0, round(rng.gauss(92 - 4 * harm, 3), 1)])
            out.append(Outcome(decision_id=common["id"], variant=variant,
                               verdict=rng.choice(("win", "loss", "neutral")), quality=quality, **common))
        else:
            metric = rng.choice(("latency_ms", "cost_cents", "error"))
            if metric == "latency_ms":
                value = rng.choice([900.0, 1000.0, 1600.0, round(rng.lognormvariate(6.7 + 0.3 * harm, 0.3))])
            elif metric == "cost_cents":
                value = rng.choice([2.0, 3.0, rng.uniform(1, 3 + harm)])
            else:
                value = float(rng.random() < 0.02 + 0.1 * harm)
            out.append(Metric(variant=variant, name=metric, value=value, **common))
        if rng.random() < 0.002:  # a resume: re-enables a killed rollout (a no-op on a live one)
            resume = transitions.resume_command(control, 20.0, id=ids(t), rollout=name, time_ms=t, producer="sim",
                                                actor="operator", reason="fix_applied")
            state[name] = resume.after
            out.append(resume)
    return out

