"""``rollout demo``: a synthetic service rolls a candidate out and the engine kills it.

The whole stack runs for real: the embedded nats-server, every consumer as its own
process (as under ``rollout up``), the operator API, engine ticks, and a service using
the SDK. The story, in under a minute:

1. the operator starts a canary at 5% through the API, then raises it to 20%;
2. the candidate degrades (latency and quality), as a bad release would;
3. the rollback consumer sees the breach, fires a kill switch on the control subject;
4. the service's ``assign()`` sends everyone back to the baseline at once.

The terminal shows live stats and the moment of the kill, then a summary with the
detection latency and where the weekly report is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.api.client import call
from rollout_engine.engine.bus import connect
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.logtools.report import WeeklyRollup, render, week_bounds
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.demo_acks import (
    applied_line,
    close_replicas,
    kill_propagation,
    start_replicas,
)
from rollout_engine.events import KillSwitch, LogMessage, subjects

__all__ = ["DemoResult", "run_demo"]

ROLLOUT = "planner-v2"
RATE = 400  # requests per second of the synthetic service
SLICE_S = 0.05
RAISE_AT_S = 5.0
DEGRADE_AT_S = 10.0
GIVE_UP_AT_S = 40.0
AFTER_KILL_S = 2.0


@dataclass
class DemoResult:
    """What the demo observed; ``killed`` is False only if the engine failed to act."""

    killed: bool = False
    detection_latency_ms: float | None = None
    event_time_latency_ms: float | None = None
    reason: str = ""
    breaches: list[dict[str, Any]] = field(default_factory=list)
    served_candidate_after_kill: int = 0
    requests: int = 0
    served: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "candidate": 0})
    """Requests served per variant over the whole demo (the live lines show the last-100 window)."""
    metrics_url: str = ""
    applied: dict[str, Any] | None = None
    """Who applied the kill: the propagation section of ``rollout status --json``."""
    report: str = ""
    chart: str = ""
    seconds: float = 0.0


class SyntheticService:
    """A planner whose candidate turns bad at a given moment (seeded, reproducible)."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.degraded = False

    def serve(self, variant: str) -> tuple[float, float, float, str]:
        """(latency ms, cost cents, quality 0-100, verdict) of one request."""
        bad = self.degraded and variant == "candidate"
        latency = self.rng.lognormvariate(6.6, 0.25) * (2.6 if bad else 1.0)  # ~735 ms median
        cost = self.rng.uniform(1.0, 2.4)
        quality = min(100.0, max(0.0, self.rng.gauss(92.0 - (14.0 if bad else 0.0), 3.0)))
        verdict = "win" if quality >= 85 else ("loss" if quality < 75 else "neutral")
        return latency, cost, quality, verdict


def _line(elapsed: float, pct: float, stats: dict[str, Any] | None) -> str:
    parts = [f"t={elapsed:5.1f}s  canary {pct:5.1f}%"]
    window = (stats or {}).get("windows", {}).get("last_n", {})
    for variant in ("baseline", "candidate"):
        view = window.get(variant)
        if not view:
            parts.append(f"{variant}: no stats yet")
            continue
        recent = view.get("decisions", 0)
        if not recent:  # nothing of this variant in the window: its last figures would be stale
            parts.append(f"{variant}: none among the last requests")
            continue
        quality = view.get("quality_mean")
        p95 = (view.get("metrics", {}).get("latency_ms") or {}).get("p95")
        parts.append(
            f"{variant}: last {recent:>3} quality={quality:5.1f} p95={p95:6.0f}ms"
            if quality is not None and p95 is not None else f"{variant}: last {recent:>3}"
        )
    return "  |  ".join(parts)


async def _stats(kv: Any) -> dict[str, Any] | None:
    with contextlib.suppress(Exception):
        entry = await kv.get(subjects.kv_key("stats", ROLLOUT))
        return msgspec.json.decode(entry.value) if entry and entry.value else None
    return None


async def _traffic(client: RolloutClient, service: SyntheticService, result: DemoResult,
                   killed_at: list[float]) -> None:
    """One slice of requests through the SDK: decide, serve, record metrics and outcome."""
    for i in range(int(RATE * SLICE_S)):
        decision = client.decide(ROLLOUT, f"user-{service.rng.randrange(100_000)}")
        latency, cost, quality, verdict = service.serve(decision.variant)
        await client.record_metric(ROLLOUT, decision.variant, "latency_ms", latency, unit="ms",
                                   decision_id=decision.id)
        await client.record_metric(ROLLOUT, decision.variant, "cost_cents", cost, unit="cents",
                                   decision_id=decision.id)
        await client.record_outcome(ROLLOUT, decision.id, decision.variant, verdict, quality=quality)
        result.requests += 1
        result.served[decision.variant] = result.served.get(decision.variant, 0) + 1
        if killed_at and decision.variant == "candidate":
            result.served_candidate_after_kill += 1
        del i


async def run_demo(data_dir: Path, serve: Callable[..., Awaitable[Any]], out: Callable[[str], None] = print) -> DemoResult:
    """Run the whole story against a fresh embedded stack in ``data_dir``.

    ``serve`` runs the stack as ``rollout up`` does (``engine.cli.up.serve``; passed in by
    the ``rollout demo`` command, so the stack's room does not import the CLI).
    """
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    result = DemoResult()
    begin = time.monotonic()
    ready, stop = asyncio.Event(), asyncio.Event()
    metrics_port = free_port(DEMO_METRICS_PORT)
    result.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    args = argparse.Namespace(config=None, nats_url=None, data_dir=str(data_dir), port=0, host=None,
                              no_consumers=False, cluster=0, metrics_port=metrics_port)
    logging.getLogger().setLevel(logging.WARNING)  # the terminal tells the story; processes log to files
    stack = asyncio.create_task(serve(args, ready=ready, stop=stop, say=lambda line: out(f"stack: {line}"),
                                      log_dir=data_dir / "logs"))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        settings: Settings = load_settings(env={}, data_dir=str(data_dir))
        nc = await connect(settings, name="demo-operator")
        kv = await nc.jetstream().key_value(subjects.STATE_BUCKET)
        out(f"stack: waiting for the consumer processes and the operator API to answer "
            f"(their logs: {data_dir / 'logs'})")
        waited = time.monotonic()
        await _wait_for_api(nc)
        out(f"stack: operator API answers after {time.monotonic() - waited:.1f} s; "
            f"{time.monotonic() - begin:.1f} s since start")
        await call(nc, "config", {"rollout": ROLLOUT, "canary_pct": 5.0, "create": True,
                                  "actor": "demo-operator", "reason": "initial canary at 5%"})
        out(f"operator: canary of {ROLLOUT} at 5% (guards: quality drop > 5, p95 latency > 1600 ms, "
            "cost > 3.0 cents, at least 30 candidate samples)")
        service = SyntheticService()
        killed_at: list[float] = []
        replicas = await start_replicas(settings, data_dir, "demo-service")  # engine/stack/demo_acks.py
        async with RolloutClient(settings, producer="demo-service") as client:
            await _wait(lambda: client.state(ROLLOUT).canary_pct == 5.0, 10)
            start = time.monotonic()
            raised = False
            next_line = 0.0
            degrade_wall = degrade_ms = 0.0
            while True:
                elapsed = time.monotonic() - start
                if not raised and elapsed >= RAISE_AT_S:
                    await call(nc, "config", {"rollout": ROLLOUT, "canary_pct": 20.0, "actor": "demo-operator",
                                              "reason": "healthy at 5%: raise to 20%"})
                    out("operator: canary raised to 20%")
                    raised = True
                if not service.degraded and elapsed >= DEGRADE_AT_S:
                    service.degraded = True
                    degrade_wall, degrade_ms = time.monotonic(), time.time() * 1000
                    out("service: the candidate degrades now (latency x2.6, quality -14 points)")
                state = client.state(ROLLOUT)
                if state.kill_switch and not killed_at:
                    killed_at.append(time.monotonic())
                    result.killed = True
                    result.detection_latency_ms = (killed_at[0] - degrade_wall) * 1000 if degrade_wall else None
                    kill = await _last_kill(nc)
                    if kill is not None:
                        result.reason = kill.reason
                        result.breaches = [msgspec.to_builtins(b) for b in kill.breaches]
                        result.event_time_latency_ms = kill.time_ms - degrade_ms if degrade_ms else None
                    out(f"engine: KILL SWITCH fired by {kill.actor if kill else 'the engine'}: {result.reason}")
                    out(f"service: assign() now sends every unit to the baseline (canary {state.canary_pct:.0f}%)")
                    result.applied = await kill_propagation(nc.jetstream(), ROLLOUT)
                    out(f"service: {applied_line(result.applied)}")
                if killed_at and time.monotonic() - killed_at[0] > AFTER_KILL_S:
                    break
                if elapsed > GIVE_UP_AT_S:
                    out("demo: no kill switch within the time limit; see `rollout status` and docs/operations.md")
                    break
                if elapsed >= next_line:
                    out(_line(elapsed, state.canary_pct, await _stats(kv)))
                    next_line += 1.0
                await _traffic(client, service, result, killed_at)
                await asyncio.sleep(SLICE_S)
            await client.flush(10)
        await close_replicas(replicas)
        result.report, result.chart = await _report(nc, data_dir)
        await nc.close()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stack, 30)
    result.seconds = time.monotonic() - begin
    return result


DEMO_METRICS_PORT = 9464
"""The port Prometheus's own examples scrape; the demo takes another free one if it is busy."""


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens on it on loopback, else a free port the kernel picks."""
    for port in (preferred, 0):
        with contextlib.closing(socket.socket()) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError("no free loopback port for the demo's /metrics")


async def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo stack did not come up in time")
        await asyncio.sleep(0.02)


async def _wait_for_api(nc: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await call(nc, "health", {}, timeout=1.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _last_kill(nc: Any) -> KillSwitch | None:
    with contextlib.suppress(Exception):
        msg = await nc.jetstream().get_last_msg(subjects.LOG_STREAM, subjects.control(ROLLOUT, "kill_switch"))
        events = events_of(LogMessage(int(msg.seq or 0), msg.subject or "", bytes(msg.data or b"")))
        return next((e for e in reversed(events) if isinstance(e, KillSwitch)), None)
    return None


async def _report(nc: Any, data_dir: Path) -> tuple[str, str]:
    """The weekly report of this week's log, as `rollout report --week` writes it."""
    now = int(time.time() * 1000)
    start, end, label = week_bounds("last", now + 1000)  # the last event may be stamped a moment after now
    rollup = WeeklyRollup(start, end)
    async for msg in read_messages(nc.jetstream(), [subjects.EVENTS_ALL, subjects.CONTROL_ALL], since_ms=0):
        for event in events_of(msg):
            rollup.add(event)
    markdown, chart = render(rollup, label, data_dir / "reports")
    return str(markdown), str(chart)
