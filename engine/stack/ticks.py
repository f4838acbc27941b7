"""Engine ticks: time as an event on ``ro.tick``.

Windows, sustain, hold-down and cooldowns advance on ticks, so they move when no traffic
arrives, and a replay reproduces them exactly. A tick's id is derived from its quantized
time (``tick-<ms>``), so replays and audits see the same ids. It goes out with
``Nats-Msg-Id`` = the engine's keyed id of that (``engine/stack/msg_ids.py``): two tick
publishers sharing the key (an HA pair, a restart) de-duplicate each other in
JetStream's duplicate window instead of doubling time, and a producer, who can publish
into the same stream, cannot burn the ids of future ticks and stop time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js import JetStreamContext

from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.events import Tick, encode, subjects

__all__ = ["make_tick", "run_ticks"]

log = logging.getLogger(__name__)


def make_tick(time_ms: int, interval_ms: int, producer: str = "engine") -> Tick:
    """The tick for the interval that contains ``time_ms`` (deterministic id)."""
    quantized = time_ms - time_ms % interval_ms
    return Tick(id=f"tick-{quantized}", time_ms=quantized, producer=producer)


async def run_ticks(js: JetStreamContext, interval_ms: int, stop: asyncio.Event, ids: EngineIds) -> None:
    """Publish one tick per interval until ``stop`` is set; survive NATS outages."""
    period = interval_ms / 1000
    while not stop.is_set():
        tick = make_tick(time.time_ns() // 1_000_000, interval_ms)
        try:
            await js.publish(subjects.TICK, encode(tick), headers=ids.headers(tick.id), timeout=2)
        except Exception as exc:  # an outage must not stop time; the next tick follows
            log.warning("tick not published: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), period - (time.time() % period))
