"""Shared helpers of the fault-injection tests (``test_faults_*.py``).

The oracle of every fault test is the same: after the fault, the consumer's committed
state must equal a clean fold of the stream as it is (nothing lost, nothing doubled),
and the number of events folded must equal the number published.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout_engine.consumers import registry
from rollout_engine.consumers.folding import Folder
from rollout_engine.engine.settings import Settings
from rollout_engine.events import (
    Decision,
    Event,
    LogMessage,
    Metric,
    Outcome,
    encode_batch,
    subjects,
)

T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]
SOAK = max(1, int(os.environ.get("ROLLOUT_SOAK", "1")))
"""Scale of the fault tests: 1 in ``make test``; ``make soak`` sets ``ROLLOUT_SOAK=10``."""


def batch(n: int, rollout: str, size: int = 20, t0: int = T0) -> tuple[str, list[Event]]:
    """The ``n``-th batch of a deterministic workload: decisions, outcomes, metrics in turn."""
    kind = ("decision", "outcome", "metric")[n % 3]
    t = t0 + n * 50
    events: list[Event] = []
    for i in range(size):
        common = {"id": f"{rollout}-{n}-{i}", "rollout": rollout, "time_ms": t + i, "producer": "faults"}
        variant = "candidate" if (n + i) % 3 == 0 else "baseline"
        if kind == "decision":
            events.append(Decision(unit=f"u{i}", variant=variant, reason="canary", canary_pct=30.0,
                                   config_version=1, propensity=0.3, **common))
        elif kind == "outcome":
            events.append(Outcome(decision_id="d", variant=variant, verdict=("win", "loss", "neutral")[i % 3],
                                  quality=80.0 + (n * 7 + i) % 20, **common))
        else:
            events.append(Metric(variant=variant, name=("latency_ms", "error")[i % 2],
                                 value=float((n * 31 + i * 17) % 500) if i % 2 == 0 else float(i % 5 == 0), **common))
    return subjects.event(rollout, kind), events


async def publish(js: Any, first: int, count: int, rollouts: Callable[[int], str], size: int = 20) -> int:
    """Publish batches ``first..first+count``; return the number of events published."""
    events = 0
    for n in range(first, first + count):
        subject, items = batch(n, rollouts(n), size)
        await js.publish_async(subject, encode_batch(items))
        events += len(items)
    await js.publish_async_completed()
    return events


def build(name: str, settings: Settings) -> Any:
    """A fresh registered consumer (projection + hooks) by name."""
    return registry.build(name, settings)


async def clean_fold(js: Any, name: str, settings: Settings, last: int) -> tuple[str, int]:
    """(digest, events) of a fresh projection folded over the stream ``1..last``."""
    folder = Folder(build(name, settings).projection)
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        folder.fold_batch([LogMessage(seq, msg.subject or "", msg.data or b"")])
    return folder.projection.digest(), folder.events


async def last_seq(js: Any) -> int:
    return int((await js.stream_info(subjects.LOG_STREAM)).state.last_seq)


async def kill_switch_seqs(js: Any, rollout: str) -> list[int]:
    """Stream sequences of every kill switch of ``rollout`` in the log (read one by one)."""
    found = []
    for seq in range(1, await last_seq(js) + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        if msg.subject == subjects.control(rollout, "kill_switch"):
            found.append(seq)
    return found


async def stored_kill_switch_seqs(js: Any, rollout: str, timeout: float = 10.0) -> list[int]:
    """:func:`kill_switch_seqs` once there is one (or ``timeout`` passed): nats-server
    hands a message to core subscribers before its stream has stored it (the stream
    takes it from a queue), so a test that received a kill may not see it in the log
    yet (seen once on CI)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := await kill_switch_seqs(js, rollout)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return found


def committed(data_dir: str | Path, name: str) -> int:
    """The position a consumer has committed, read from its store by a second connection."""
    path = Path(data_dir) / "consumers" / f"{name}.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        try:
            row = db.execute("SELECT MAX(seq) FROM tracking").fetchone()
        except sqlite3.OperationalError:  # created, schema not yet written
            return 0
    return int(row[0] or 0)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def spawn(url: str, data_dir: Path, name: str, *extra: str) -> Any:
    """``rollout consumer NAME`` as a child process (stdout piped, stderr appended to
    ``DATA_DIR/NAME.stderr`` so a failure can be read)."""
    argv = [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", url, "--data-dir", str(data_dir), "consumer", name, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{name}.stderr", "ab") as err:
        return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env)
