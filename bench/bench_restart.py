"""How long the kill path is down when every consumer process dies at once.

A real ``rollout up`` (embedded server, every consumer as a supervised process, the
rollback consumer with its warm standby). Each round SIGKILLs the process folding each
consumer's store, all at once (the holder named in ``<store>.lock``), publishes one
event, and measures until the rollback consumer has *committed* a position past it: the
time during which no kill switch could have fired.

The reference, in the same run: the same, with the rollback consumer's standby killed
too, so its replacement is a cold start (a Python process importing the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Figure
from rollout_engine.engine.bus import connect
from rollout_engine.engine.settings import load_settings
from rollout_engine.engine.stack.supervisor import FAST_EXIT_S
from rollout_engine.events import Metric, encode, subjects

__all__ = ["restart_figures"]

CONSUMERS = ("control", "canary_stats", "bandit", "verification", "rollback")
HEALTHY_S = FAST_EXIT_S + 0.5
"""A round starts once every process has run this long: a standby is warm (imports done)
and a kill is a crash after a healthy run, which the supervisor restarts at once (a
process killed younger would count as a crash loop and be restarted with backoff)."""


def _committed(data: Path, name: str) -> int:
    path = data / "consumers" / f"{name}.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT MAX(seq) FROM tracking").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0) if row else 0


def _holder(data: Path, name: str) -> int:
    try:
        text = (data / "consumers" / f"{name}.lock").read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _age_s(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def _rollback_pids(data: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"{data} consumer rollback"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if _alive(int(p))]


async def _ready(data: Path, timeout: float = 180.0) -> tuple[dict[str, int], int]:
    """Every consumer folding (lock held, position > 0) and a warm rollback standby: (holders, standby)."""
    deadline = time.monotonic() + timeout
    while True:
        holders = {name: _holder(data, name) for name in CONSUMERS}
        pids = _rollback_pids(data)
        standby = next((p for p in pids if p != holders["rollback"]), 0)
        if (all(pid and _alive(pid) and _age_s(pid) >= HEALTHY_S for pid in holders.values())
                and _committed(data, "rollback") > 0 and standby and _age_s(standby) >= HEALTHY_S):
            return holders, standby
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout up did not get ready in {timeout:.0f} s: holders {holders}, rollback {pids}")
        await asyncio.sleep(0.2)


async def _round(js: object, data: Path, cold: bool, n: int) -> float:
    """One kill of every consumer; milliseconds until the rollback consumer commits again."""
    holders, standby = await _ready(data)
    last = int((await js.stream_info(subjects.LOG_STREAM)).state.last_seq)  # type: ignore[attr-defined]
    victims = set(holders.values()) | ({standby} if cold else set())
    start = time.perf_counter()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    event = Metric(id=f"bench-restart-{n}", rollout="bench-restart", time_ms=time.time_ns() // 1_000_000,
                   producer="bench", variant="baseline", name="latency_ms", value=1.0)
    await js.publish(subjects.event(event.rollout, "metric"), encode(event))  # type: ignore[attr-defined]
    while _committed(data, "rollback") <= last:
        await asyncio.sleep(0.002)
    elapsed = (time.perf_counter() - start) * 1000
    taken_over = _holder(data, "rollback")
    if taken_over in victims:
        raise RuntimeError(f"round {n}: the rollback store was committed by a killed process ({taken_over}); "
                           "the measurement is void")
    return elapsed


async def restart_figures(rounds: int = 5) -> list[Figure]:
    """Warm (standby takes over) and cold (standby killed too) recovery of the rollback consumer."""
    with tempfile.TemporaryDirectory(prefix="rollout-bench-restart-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
        with open(Path(tmp) / "up.log", "wb") as log:
            up = subprocess.Popen([sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(data), "up",
                                   "--port", "0"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while not (data / "nats.url").exists():
                await asyncio.sleep(0.1)
            nc = await connect(load_settings(env={}, nats_url=(data / "nats.url").read_text().strip()), name="bench")
            try:
                js = nc.jetstream()
                warm = [await _round(js, data, False, n) for n in range(rounds)]
                cold = [await _round(js, data, True, rounds + n) for n in range(rounds)]
            finally:
                await nc.close()
        finally:
            up.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(60)
            if up.poll() is None:
                up.kill()
    cold_median = statistics.median(cold)
    return [
        Figure("kill every consumer at once -> rollback folding again (warm standby)", "ms",
               statistics.median(warm), min(warm), max(warm), warm, target="<= 1,000 (median and max)",
               reference="same, standby killed too (cold start)", reference_value=cold_median),
        Figure("kill every consumer and the standby -> rollback folding again (cold start)", "ms",
               cold_median, min(cold), max(cold), cold),
    ]
