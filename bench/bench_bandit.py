"""Bandit figures: ``choose()`` calls/s and the bandit and verification folds' events/s.

Each function is a coroutine returning one value, so ``bench.harness.measure`` can take
the median of runs, e.g. ``await measure("choose()", "calls/s", choose_calls_per_s)``.
No NATS: these are the hot paths in-process (the SDK's local choice, the pure folds);
the transport's cost is measured by the runtime's own figures.
"""

from __future__ import annotations

import msgspec

from bench.harness import timed
from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.verification import VerificationProjection
from rollout_engine.engine.sdk.choice import BanditChooser
from rollout_engine.events import BanditConfig, Decision, Outcome, Tick

__all__ = ["bandit_events_per_s", "bandit_view_per_s", "choose_calls_per_s", "verification_events_per_s"]

T0 = 1_700_000_000_000
ROLLOUT = "bench-bandit"
ARMS = ["a", "b", "c"]


def _config() -> BanditConfig:
    return BanditConfig(
        id="bench-cfg", rollout=ROLLOUT, time_ms=T0, producer="bench", actor="bench", reason="bench",
        bandit={"arms": ARMS, "min_samples": 5},
    )


def _workload(n: int) -> list[object]:
    """``n`` events: decisions, their outcomes (every 4th inconclusive, every 10th missing)
    and a tick every 100 events, 10 ms of event time apart."""
    events: list[object] = [_config()]
    i = 0
    while len(events) < n:
        t = T0 + i * 10
        arm = ARMS[i % 3]
        events.append(Decision(
            id=f"d{i}", rollout=ROLLOUT, time_ms=t, producer="bench", unit=f"u{i}", variant=arm, reason="bandit",
            canary_pct=0.0, config_version=0, propensity=1 / 3, dry_run=True,
        ))
        if i % 10:
            verdict = "inconclusive" if i % 4 == 0 else ("win" if (i * 7919) % 10 < 3 + i % 3 * 2 else "loss")
            events.append(Outcome(
                id=f"o{i}", rollout=ROLLOUT, time_ms=t + 5, producer="bench", decision_id=f"d{i}", variant=arm,
                verdict=verdict, confidence=0.5 if i % 6 == 0 else 0.9,
            ))
        if i % 50 == 0:
            events.append(Tick(id=f"tick-{t}", time_ms=t, producer="engine"))
        i += 1
    return events[:n]


def _reducer_rate(projection: BanditProjection | VerificationProjection, n: int) -> float:
    """Events per second ``projection.apply`` alone folds (the reducer's cost, no decoding)."""
    events = _workload(n)
    with timed() as elapsed:
        for seq, event in enumerate(events, 1):
            projection.apply(event, seq)  # type: ignore[arg-type]
    return n / elapsed()


async def bandit_events_per_s(n: int = 200_000) -> float:
    """Events folded per second by the bandit projection (joins, posteriors, expiry)."""
    return _reducer_rate(BanditProjection(), n)


async def bandit_view_per_s(n: int = 2_000) -> float:
    """Published views computed per second (Thompson probabilities by quadrature, 3 arms)."""
    projection = BanditProjection()
    for seq, event in enumerate(_workload(5_000), 1):
        projection.apply(event, seq)  # type: ignore[arg-type]
    with timed() as elapsed:
        for _ in range(n):
            msgspec.msgpack.encode(projection.view(ROLLOUT))
    return n / elapsed()


async def verification_events_per_s(n: int = 200_000) -> float:
    """Events folded per second by the verification queue (opens, re-checks, closes)."""
    return _reducer_rate(VerificationProjection(), n)


async def choose_calls_per_s(n: int = 200_000) -> float:
    """SDK-side ``choose()`` calls per second: local draw from the published weights, guardrail
    check and the Decision event built (publishing is the SDK publisher's figure)."""
    projection = BanditProjection()
    for seq, event in enumerate(_workload(5_000), 1):
        projection.apply(event, seq)  # type: ignore[arg-type]
    chooser = BanditChooser()
    chooser.update(msgspec.msgpack.encode(projection.view(ROLLOUT)))
    choose, decision = chooser.choose, chooser.decision
    with timed() as elapsed:
        for _ in range(n):
            decision(choose(ROLLOUT, "user-42"), producer="bench")
    return n / elapsed()


if __name__ == "__main__":  # python -m bench.bench_bandit
    import asyncio

    for fn in (choose_calls_per_s, bandit_events_per_s, bandit_view_per_s, verification_events_per_s):
        print(f"{fn.__name__:28s} {asyncio.run(fn()):>12,.0f}")
