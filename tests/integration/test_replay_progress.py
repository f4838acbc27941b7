"""The replay progress bar: one line, only forward, ending at the exact number replayed."""

from __future__ import annotations

import argparse
import asyncio
import io
import re

from bench.workload import make_batches
from rollout_engine.engine.cli.replay import _replay_stream, progress_bar
from rollout_engine.engine.logtools.replay import WARMUP, Replayer, make_projections
from rollout_engine.events import LogMessage, Tick, encode, encode_batch, subjects


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draws(screen: _Terminal) -> list[tuple[int, int]]:
    return [(int(d), int(t)) for d, t in re.findall(r"\[[#-]+\] (\d+)/(\d+) msgs", screen.getvalue())]


def test_a_parallel_replay_draws_one_bar_that_only_moves_forward() -> None:
    messages = [LogMessage(i + 1, subjects.event(r, k), encode_batch(e))
                for i, (r, k, e) in enumerate(make_batches(2 * WARMUP * 100 + 10_000, rollouts=5))]
    screen = _Terminal()
    replayer = Replayer(make_projections(), total=len(messages), progress=progress_bar("replay", screen))
    replayer.feed_parallel(messages, workers=2)  # times every projection on the same first messages
    replayer.total = replayer.messages
    replayer.result()
    draws = _draws(screen)
    assert [d for d, _ in draws] == sorted({d for d, _ in draws}), "the bar went back"
    assert draws[-1] == (len(messages), len(messages)) and screen.getvalue().count("\n") == 1


async def test_stream_replay_stops_at_the_log_as_it_was_while_ticks_keep_arriving(stack) -> None:
    settings, _nc, js = stack
    for i in range(300):
        await js.publish(subjects.TICK, encode(Tick(id=f"t{i}", time_ms=1_000 + i, producer="test")))
    at_start = (await js.stream_info(subjects.LOG_STREAM)).state.messages
    stop = asyncio.Event()

    async def more_ticks() -> None:
        i = 300
        while not stop.is_set():
            await js.publish(subjects.TICK, encode(Tick(id=f"t{i}", time_ms=1_000 + i, producer="test")))
            i += 1
            await asyncio.sleep(0)

    screen = _Terminal()
    replayer = Replayer(make_projections(["control"]), progress=progress_bar("replay", screen))
    writer = asyncio.create_task(more_ticks())
    try:
        await _replay_stream(argparse.Namespace(config=None, nats_url=settings.nats_url, data_dir=settings.data_dir),
                             replayer)
    finally:
        stop.set()
        await writer
    total = replayer.total  # the log when the replay began
    assert replayer.messages == total >= at_start
    assert (await js.stream_info(subjects.LOG_STREAM)).state.messages > total, "ticks arrived meanwhile"
    replayer.result()
    draws = _draws(screen)
    assert draws[-1] == (total, total) and max(d for d, _ in draws) == total
    assert screen.getvalue().count("\n") == 1
