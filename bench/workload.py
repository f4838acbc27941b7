"""A deterministic synthetic workload shared by every benchmark, so figures compare.

Per rollout: decisions, outcomes and metrics (latency, cost, error) for a baseline and a
candidate, in 100-event batches of one rollout and kind, as the SDK publishes them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from nats.js import JetStreamContext

from rollout_engine.events import (
    Decision,
    Event,
    Metric,
    Outcome,
    encode_batch,
    new_event_id,
    subjects,
)

__all__ = ["BATCH", "make_batches", "publish_batches"]

BATCH = 100
T0 = 1_700_000_000_000


def make_batches(total: int, rollouts: int = 10, seed: int = 7, t0: int = T0) -> Iterator[tuple[str, str, list[Event]]]:
    """Yield ``(rollout, kind, events)`` batches adding up to ``total`` events."""
    rng = random.Random(seed)
    made = 0
    step = 0
    while made < total:
        rollout = f"bench-{step % rollouts}"
        kind = ("decision", "outcome", "metric", "metric")[(step // rollouts) % 4]
        n = min(BATCH, total - made)
        now = t0 + step * 10
        batch: list[Event] = []
        for i in range(n):
            variant = "candidate" if rng.random() < 0.2 else "baseline"
            common = {"id": new_event_id(now), "rollout": rollout, "time_ms": now + i // 10, "producer": "bench"}
            if kind == "decision":
                batch.append(Decision(unit=f"u{rng.randrange(1_000_000)}", variant=variant, reason="canary",
                                      canary_pct=20.0, config_version=1, propensity=0.2, **common))
            elif kind == "outcome":
                batch.append(Outcome(decision_id=common["id"], variant=variant,
                                     verdict=rng.choice(("win", "loss", "neutral")),
                                     quality=rng.gauss(90, 5), reward=rng.random(), confidence=0.9, **common))
            else:
                name = ("latency_ms", "cost_cents", "error")[i % 3]
                value = rng.lognormvariate(6.5, 0.4) if name == "latency_ms" else (
                    rng.uniform(1, 3) if name == "cost_cents" else float(rng.random() < 0.02))
                batch.append(Metric(variant=variant, name=name, value=value, **common))
        made += n
        step += 1
        yield rollout, kind, batch


async def publish_batches(js: JetStreamContext, batches: list[tuple[str, str, list[Event]]]) -> int:
    """Publish pre-built batches with async acks (PITFALLS: no round trip per message)."""
    count = 0
    for rollout, kind, events in batches:
        await js.publish_async(subjects.event(rollout, kind), encode_batch(events),
                               headers={"Nats-Msg-Id": f"{events[0].id}-{len(events)}"})
        count += len(events)
    await js.publish_async_completed()
    return count
