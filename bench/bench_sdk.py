"""SDK benchmarks: ``assign()`` calls/s, JetStream-acked events/s, and the cost of signing and
verifying one control command (µs), from one process.

Each function is one run returning one number, for ``bench.harness.measure``::

    await measure("sdk assign()", "calls/s", lambda: assign_rate(500_000))

``python -m bench.bench_sdk`` prints both figures.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.harness import bench_server
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.events import ConfigChange, ControlState, encode, new_event_id, subjects

__all__ = ["assign_rate", "publish_rate", "sign_us", "verify_us"]

ROLLOUT = "bench-sdk"


async def assign_rate(n: int = 500_000) -> float:
    """``assign()`` calls per second: hash, choose, build the Decision, buffer it.

    The loop does not yield, so the figure is the hot path alone (no publishing inside
    it); the buffer is sized to hold every decision, and is flushed after timing.
    """
    units = [f"user-{i}" for i in range(n)]
    async with bench_server() as (_, settings, _nc, js), RolloutClient(
        settings, producer="bench", outbox_path=Path(settings.data_dir) / "ob.sqlite", max_buffered=n + 1
    ) as client:
        await _set_canary(js, client, 10.0)  # a live canary split
        assign = client.assign
        start = time.perf_counter()
        for unit in units:
            assign(ROLLOUT, unit)
        elapsed = time.perf_counter() - start
        await client.flush(60)
    return n / elapsed


async def _set_canary(js: object, client: RolloutClient, pct: float) -> None:
    after = ControlState(canary_pct=pct, config_version=1)
    change = ConfigChange(id=new_event_id(), rollout=ROLLOUT, time_ms=int(time.time() * 1000),
                          producer="bench", actor="bench", reason="bench", before=ControlState(), after=after)
    await js.publish(subjects.control(ROLLOUT, "config"), encode(change))  # type: ignore[attr-defined]
    while client.state(ROLLOUT) != after:
        await asyncio.sleep(0.005)


async def publish_rate(n: int = 1_000_000, batch_size: int = 250, chunk: int = 5_000) -> float:
    """Decisions per second from ``assign()`` to JetStream acknowledgement.

    Records ``chunk`` decisions between yields (a busy service's pace), then flushes;
    the clock stops when the last batch is acknowledged. Checks the stream holds them.
    """
    units = [f"user-{i}" for i in range(chunk)]
    with tempfile.TemporaryDirectory(prefix="rollout-bench-sdk-") as tmp:
        async with bench_server() as (_, settings, _nc, js), RolloutClient(
            settings, producer="bench", outbox_path=f"{tmp}/ob.sqlite", batch_size=batch_size,
            max_buffered=max(100_000, 4 * chunk),
        ) as client:
            decide = client.decide
            start = time.perf_counter()
            sent = 0
            while sent < n:
                for unit in units:
                    decide(ROLLOUT, unit)
                sent += chunk
                await client.wait_room(chunk, 30)  # back-pressure before the next burst
                await asyncio.sleep(0)
            await client.flush(120)
            elapsed = time.perf_counter() - start
            assert client.outbox_depth == 0, "events went to the outbox: the figure would be wrong"
            info = await js.stream_info(subjects.LOG_STREAM)
            assert info.state.messages >= n // batch_size
    return n / elapsed


def _kill_command() -> tuple[str, bytes]:
    """A kill switch as the engine publishes it (about 400 bytes of msgpack)."""
    from rollout_engine.events import KillSwitch

    before = ControlState(canary_pct=25, config_version=7, baseline="v1", candidate="v2")
    after = ControlState(canary_pct=0, kill_switch=True, config_version=8, baseline="v1", candidate="v2")
    event = KillSwitch(id=new_event_id(), rollout=ROLLOUT, time_ms=1, producer="rollback", actor="rollback",
                       reason="p99 latency 412 ms > 1.5 x baseline 180 ms, sustained 30 s", before=before, after=after)
    return subjects.control(ROLLOUT, "kill_switch"), encode(event)


async def sign_us(n: int = 5_000) -> float:
    """Microseconds the engine spends signing one control command (Ed25519, headers built)."""
    from rollout_engine.engine.stack.signing import CommandSigner

    signer = CommandSigner.ephemeral()
    subject, data = _kill_command()
    start = time.perf_counter()
    for _ in range(n):
        signer.headers(subject, data)
    return (time.perf_counter() - start) / n * 1e6


async def verify_us(n: int = 5_000) -> float:
    """Microseconds an SDK spends verifying one control command before applying it."""
    from rollout_engine.engine.sdk.signatures import ControlVerifier
    from rollout_engine.engine.stack.signing import CommandSigner

    signer = CommandSigner.ephemeral()
    verifier = ControlVerifier(require_signed=True, ring=signer.ring)
    subject, data = _kill_command()
    headers = signer.headers(subject, data)
    start = time.perf_counter()
    for _ in range(n):
        verifier.check(subject, data, headers)
    return (time.perf_counter() - start) / n * 1e6


async def evidence_us(n: int = 500, samples: int = 100) -> float:
    """Microseconds the rollback consumer spends naming a kill's evidence (consumers/rollback/proof.py):
    a relative guard's window of ``samples`` per variant, both read with their seqs, digested and marked."""
    from rollout_engine.consumers.canary_stats import CanaryStats
    from rollout_engine.consumers.rollback.guards import GuardResult
    from rollout_engine.consumers.rollback.policy import DEFAULT_POLICY
    from rollout_engine.consumers.rollback.proof import kill_evidence
    from rollout_engine.events import Outcome

    stats = CanaryStats(last_n=samples)
    for i in range(3 * samples):
        for variant, quality in (("baseline", 95.0), ("candidate", 82.0)):
            stats.apply(Outcome(id=new_event_id(), rollout=ROLLOUT, time_ms=1 + i, producer="bench", decision_id=f"d{i}",
                                variant=variant, verdict="win", quality=quality), 2 * i + 1)
    [guard] = [g for g in DEFAULT_POLICY.all_guards() if g.metric == "quality"]
    failing = [GuardResult(guard=guard, status="fail")]
    start = time.perf_counter()
    for _ in range(n):
        kill_evidence(stats, ROLLOUT, failing, ("baseline", "candidate"))
    return (time.perf_counter() - start) / n * 1e6


async def _main() -> None:
    print(f"assign(): {await assign_rate():,.0f} calls/s")
    print(f"publish (JetStream-acked, batched): {await publish_rate():,.0f} events/s")


if __name__ == "__main__":
    asyncio.run(_main())
