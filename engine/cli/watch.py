"""Following one rollout live, pushed by NATS: ``rollout status ROLLOUT --watch``.

:func:`follow` yields a :class:`Change` for every change of a
:class:`~engine.cli.rollout_view.RolloutView`. It starts from the API's ``status``
reply (the log read through the API, or in-process when no API runs), then folds what
is pushed, never polling:

* ``control``: a named ordered consumer on ``ro.ctl.<rollout>.>`` delivering the last
  message of every control subject, then each new one as JetStream stores it (the SDK
  follows control the same way; the ``operator`` role may create it through the
  filtered create subject only);
* ``stats``: the canary-stats snapshots on ``ro.stats.<rollout>`` (core NATS);
* ``evaluation``: the rollback consumer's evaluation on ``ro.stats.<rollout>.eval``.

A caller asks only for the sources it needs (``rollout wait --for killed`` needs only
``control``). A new source (for example the SDK instances' acknowledgements of a kill)
is one more subscription feeding the same queue and one more ``apply_*`` on the view.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.api.client import ApiError, call
from rollout_engine.engine.cli.common import CliError, sanitize, stop_on_signals
from rollout_engine.engine.cli.rollout_view import RolloutView
from rollout_engine.engine.sdk.follower import fresh_name_on_reset
from rollout_engine.events import LogMessage, kind_of, subjects

__all__ = ["SOURCES", "Change", "follow", "initial_view", "json_line", "watch"]

SOURCES = frozenset({"control", "stats", "evaluation"})
WATCHER_INACTIVE_S = 10.0
"""A watcher's consumer is deleted by the server this long after the watcher left."""


@dataclass(frozen=True, slots=True)
class Change:
    """What changed (``initial``, a control kind such as ``kill_switch``, ``stats``,
    ``evaluation``), the stream sequence for control, and the view after it."""

    kind: str
    seq: int
    view: RolloutView
    event: Any = None


async def initial_view(nc: Client, rollout: str) -> RolloutView:
    """The rollout as the API's ``status`` reports it; the log read in-process without an API."""
    try:
        reply = await call(nc, "status", {"rollout": rollout}, timeout=10)
    except ApiError as exc:
        if exc.code != 503:
            raise CliError.from_api(exc.code, f"status refused ({exc.code}): {exc.message}") from None
        # Imported only here: the in-process API folds the log with every projection (scipy
        # included), which would add a third of a second to every `rollout` command's start.
        from rollout_engine.engine.api.service import ControlApi

        try:
            reply = await ControlApi(nc).status({"rollout": rollout})
        except ApiError as inner:
            raise CliError.from_api(inner.code, f"status refused ({inner.code}): {inner.message}") from None
    return RolloutView.from_status(reply)


async def follow(nc: Client, rollout: str, sources: Collection[str] = SOURCES,
                 view: RolloutView | None = None) -> AsyncIterator[Change]:
    """Yield the initial view, then one :class:`Change` per change, until cancelled."""
    unknown = set(sources) - SOURCES
    if unknown:
        raise ValueError(f"unknown watch sources {sorted(unknown)}; expected some of {sorted(SOURCES)}")
    view = view or await initial_view(nc, rollout)
    queue: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()
    subs: list[Any] = []

    def feeder(source: str) -> Callable[[Msg], Awaitable[None]]:
        async def put(msg: Msg) -> None:  # nats-py wants a coroutine function per subscription
            queue.put_nowait((source, msg))

        return put

    try:
        if "control" in sources:
            subs.append(await _follow_control(nc, rollout, feeder("control")))
        if "stats" in sources:
            subs.append(await nc.subscribe(subjects.stats(rollout), cb=feeder("stats")))
        if "evaluation" in sources:
            subs.append(await nc.subscribe(subjects.evaluation(rollout), cb=feeder("evaluation")))
        yield Change("initial", view.command_seq, view)
        while True:
            source, msg = await queue.get()
            for change in _fold(view, source, msg):
                yield change
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _follow_control(nc: Client, rollout: str, cb: Any) -> Any:
    def fresh_name() -> str:
        return f"watch-{secrets.token_hex(6)}"

    sub = await nc.jetstream().subscribe(
        subjects.log_filter(rollout, "ctl"), stream=subjects.LOG_STREAM, cb=cb, ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=2.0,
        config=ConsumerConfig(name=fresh_name(), inactive_threshold=WATCHER_INACTIVE_S),
    )
    fresh_name_on_reset(sub, fresh_name)
    return sub


def _fold(view: RolloutView, source: str, msg: Msg) -> list[Change]:
    if source == "control":
        seq = int(msg.metadata.sequence.stream)
        return [Change(kind_of(e), seq, view, e) for e in events_of(LogMessage(seq, msg.subject, msg.data))
                if view.apply_event(e, seq)]
    try:
        document = msgspec.json.decode(msg.data)
    except msgspec.DecodeError:
        return []  # not ours to judge; the publisher's logs say why
    changed = view.apply_stats(document) if source == "stats" else view.apply_evaluation(document)
    return [Change(source, 0, view)] if changed else []


# --- rollout status ROLLOUT --watch ------------------------------------------------------
_HOME_CLEAR = "\x1b[H\x1b[2J"


def json_line(change: Change) -> dict[str, Any]:
    """One ``--watch --json`` line: what changed and the view after it."""
    line = {"change": change.kind, "seq": change.seq, **change.view.summary()}
    if change.kind == "stats":
        line["stats"] = change.view.stats
    elif change.kind == "evaluation":
        line["evaluation"] = change.view.evaluation
    return line


def _text_line(change: Change) -> str:
    view = change.view
    head = f"{sanitize(view.rollout)}: {view.phase}, canary {view.canary_pct:g}%"
    if view.steps:
        head += f", step {view.step}/{len(view.steps)}"
    if view.verdict:
        head += f", {sanitize(str(view.verdict))}"
    if change.event is not None:
        from rollout_engine.engine.cli.events import describe_event

        return f"{head}  <- {change.kind} #{change.seq}: {sanitize(describe_event(change.event), 300)}"
    return f"{head}  <- {change.kind}"


async def watch(nc: Client, args: argparse.Namespace, print_status: Callable[[dict[str, Any]], None]) -> int:
    """Print the rollout on every change until Ctrl-C: redrawn in place on a terminal (with
    ``print_status``, ``rollout status``'s printer), one line per change to a pipe, one
    JSON object per line with ``--json``."""
    stop = asyncio.Event()
    stop_on_signals(stop.set)
    tty = sys.stdout.isatty() and not args.json
    changes = follow(nc, args.rollout)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            step = asyncio.ensure_future(anext(changes))
            done, _ = await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return 0
            change = step.result()
            if args.json:
                sys.stdout.write(msgspec.json.encode(json_line(change)).decode() + "\n")
            elif tty:
                sys.stdout.write(_HOME_CLEAR)
                print(_text_line(change) + "   (Ctrl-C stops)")
                print_status(change.view.status_reply())
            else:
                print(_text_line(change))
            sys.stdout.flush()
    finally:
        stopping.cancel()
        await changes.aclose()

