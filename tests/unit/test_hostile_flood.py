"""Floods: one producer flooding its rollout must not starve or distort the others.

The policy (docs/reliability.md): JetStream is one ordered log and every consumer folds
it at full speed, so a flood costs other rollouts *lag* (reported per consumer), never
correctness and never unbounded memory: each rollout's state is capped (variants,
metrics per variant, shadow dimensions, last-N rings, time-window entries), whatever one
producer sends. These tests interleave a flood with a victim's traffic and check that
the victim's numbers and its kill switch are exactly what they are without the flood.
"""

from __future__ import annotations

import random

from rollout_engine.consumers.canary_stats import MAX_METRICS, MAX_VARIANTS, CanaryStats
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, Profile, runs
from rollout_engine.events import Event, KillSwitch, Metric

VICTIM, FLOODER = "victim", "flooder"
FLOOD = 30_000


def flood(n: int, seed: int = 9) -> list[Event]:
    """Metrics with ever-new variant and metric names (the worst case for state size)."""
    rng = random.Random(seed)
    return [Metric(id=f"f{i}", rollout=FLOODER, time_ms=T0 + i // 10, producer="noisy", variant=f"v{rng.randrange(5000)}",
                   name=f"m{rng.randrange(5000)}", value=rng.random() * 1e6) for i in range(n)]


def interleave(victim: list[Event], noise: list[Event]) -> list[Event]:
    """The victim's events in order, each behind a share of the flood."""
    out: list[Event] = []
    step = max(1, len(noise) // max(1, len(victim)))
    for i, event in enumerate(victim):
        out.extend(noise[i * step:(i + 1) * step])
        out.append(event)
    out.extend(noise[len(victim) * step:])
    return out


def fold_stats(events: list[Event]) -> CanaryStats:
    stats = CanaryStats()
    for seq, event in enumerate(events, 1):
        stats.apply(event, seq)
    return stats


def test_a_flood_leaves_the_victims_stats_exact_and_its_own_state_capped() -> None:
    victim = runs(VICTIM, 300, candidate=Profile(latency_ms=900.0))
    alone = fold_stats(victim)
    flooded = fold_stats(interleave(victim, flood(FLOOD)))
    for window in ("last_n", "time", "all"):
        assert flooded.view(VICTIM, window) == alone.view(VICTIM, window), window
    noisy = flooded.view(FLOODER, "all")
    assert len(noisy) <= MAX_VARIANTS
    assert all(len(v.metrics) <= MAX_METRICS for v in noisy.values())
    part = flooded.changed_parts()[FLOODER]
    assert len(part) < 4 * 1024 * 1024, f"the flooder's state is {len(part)} bytes"


def test_a_flood_does_not_delay_or_change_the_victims_kill_switch() -> None:
    victim = runs(VICTIM, 120, canary_pct=50, candidate=Profile(quality=80.0))

    def kills(events: list[Event]) -> list[KillSwitch]:
        p = RollbackProjection()
        out = []
        for seq, event in enumerate(events, 1):
            out.extend(e for e in p.apply(event, seq) if isinstance(e, KillSwitch))
        return out

    [alone] = kills(victim)
    [flooded] = kills(interleave(victim, flood(FLOOD // 3)))
    assert (flooded.id, flooded.reason, flooded.cause_id) == (alone.id, alone.reason, alone.cause_id)
