"""``rollout replay FILE|--stream`` and ``rollout backtest FILE --policy POLICY.toml``.

``replay`` rebuilds every registered projection from an export (or the live stream)
into a fresh SQLite store and prints each state digest; equal digests to the live
consumers' (``rollout consumer NAME --digest``) prove the live state is what the log
says. A progress bar is drawn on a terminal only.

``backtest`` folds a recorded log with a candidate rollback policy and reports, per
rollout, when it would have killed beside when the live policy did, with false-kill
and missed-regression counts where outcomes tell (docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    color,
    handler,
    print_json,
    sanitize,
    settings_from,
)
from rollout_engine.engine.logtools.export import ExportError
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.logtools.replay import (
    Replayer,
    make_projections,
    messages_from_file,
    write_store,
)
from rollout_engine.events import LogMessage, subjects

__all__ = ["progress_bar", "register"]


def progress_bar(label: str, stream: Any = None) -> Any:
    """One progress line on ``stream`` (stderr) when it is a terminal; None otherwise.

    The line only moves forward: a parallel replay times each projection on the same
    first messages, so the replayer's count goes back while it warms up, and that is not
    news for the reader. It ends (one newline) when the count reaches the total.
    """
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        return None
    started = time.perf_counter()
    state = {"high": -1, "finished": False}

    def draw(done: int, total: int) -> None:
        ending = bool(total) and done >= total
        if state["finished"] or done < state["high"] or (done == state["high"] and not ending):
            return
        state["high"] = done
        elapsed = max(time.perf_counter() - started, 1e-9)
        if total:
            filled = int(30 * min(done, total) / total)
            bar = "#" * filled + "-" * (30 - filled)
            out.write(f"\r{label} [{bar}] {done}/{total} msgs {done / elapsed:,.0f}/s")
        else:
            out.write(f"\r{label} {done} msgs {done / elapsed:,.0f}/s")
        if ending:
            out.write("\n")
            state["finished"] = True
        out.flush()

    return draw


async def _load_messages(args: argparse.Namespace) -> list[LogMessage]:
    if args.stream:
        nc = await connect(settings_from(args), name="rollout-replay", reconnect=False)
        try:
            return [m async for m in read_messages(nc.jetstream())]
        finally:
            await nc.close()
    if not args.file:
        raise CliError("give an export FILE or --stream")
    try:
        return messages_from_file(args.file)[1]
    except ExportError as exc:
        raise CliError(str(exc)) from None


async def _replay_stream(args: argparse.Namespace, replayer: Any) -> None:
    """Fold the live log in chunks, so a log larger than memory replays too.

    The replay is of the log as it is now: it stops at the last sequence the stream had
    when the replay began (ticks and traffic go on arriving while it runs), so the
    progress total is the exact number of messages replayed.
    """
    nc = await connect(settings_from(args), name="rollout-replay", reconnect=False)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(subjects.LOG_STREAM)).state
        replayer.total, last = state.messages, state.last_seq
        replayer.every = max(1, replayer.total // 200)
        chunk: list[LogMessage] = []
        async with contextlib.aclosing(read_messages(js)) as messages:
            async for msg in messages:
                if msg.seq > last:
                    break
                chunk.append(msg)
                if len(chunk) >= 1000:
                    replayer.feed(chunk)
                    chunk = []
        replayer.feed(chunk)
    finally:
        await nc.close()


async def _replay(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        projections = make_projections(args.only.split(",") if args.only else None, settings)
    except LookupError as exc:
        raise CliError(str(exc.args[0])) from None
    replayer = Replayer(projections, progress=progress_bar("replay"), seen=SeenIds(settings.dedupe_window_s))
    if args.stream:
        await _replay_stream(args, replayer)
    else:
        messages = await _load_messages(args)
        replayer.total, replayer.every = len(messages), max(1, len(messages) // 200)
        replayer.feed_parallel(messages)  # projections side by side, one process per CPU
    replayer.total = replayer.messages  # the bar ends at what was replayed (messages may expire meanwhile)
    result = replayer.result()
    out = Path(args.out) if args.out else settings.data_path / "replay" / f"replay-{int(time.time() * 1000)}.sqlite"
    try:
        store = write_store(result, out)
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    summary = {**result.summary(), "store": str(store)}
    if args.json:
        print_json(summary)
        return 0
    print(f"replayed {result.messages} messages, {result.events} events (up to seq {result.last_seq}) "
          f"in {result.seconds:.2f}s ({result.events_per_s:,.0f} events/s) into {store}")
    for name, digest in sorted(result.digests.items()):
        extra = f" ({result.errors[name]} fold errors)" if result.errors.get(name) else ""
        print(f"  {name:<16} {digest}{extra}")
    return 0


def _ms(value: int | None, origin: int | None) -> str:
    if value is None:
        return "-"
    return f"{value}" if origin is None else f"{value} (+{(value - origin) / 1000:.2f}s)"


async def _backtest(args: argparse.Namespace) -> int:
    from rollout_engine.engine.logtools.backtest import backtest, load_candidate

    try:
        candidate = load_candidate(args.policy)
    except OSError as exc:
        raise CliError(f"--policy {args.policy}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(f"--policy {args.policy}: {exc}") from None
    messages = await _load_messages(args)
    report = backtest(messages, candidate, candidate_name=candidate.name)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(f"backtest of policy {sanitize(candidate.name)} v{candidate.version} over {len(messages)} messages")
    for row in report.rollouts:
        origin = row["live_kill_ms"] or row["candidate_kill_ms"]
        mark = "" if row["replay_matches_recording"] else color("  (replay differs from the recording!)", "31")
        print(f"  {sanitize(row['rollout'])}: live kill {_ms(row['live_kill_ms'], None)}, "
              f"candidate kill {_ms(row['candidate_kill_ms'], origin)}; truth {row['truth']}{mark}")
    t = report.totals
    print(f"totals: {t['rollouts']} rollouts; kills live {t['live_kills']} / candidate {t['candidate_kills']}; "
          f"false kills live {t['live_false_kills']} / candidate {t['candidate_false_kills']}; "
          f"missed regressions live {t['live_missed_regressions']} / candidate {t['candidate_missed_regressions']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = sub.add_parser("replay", help="rebuild every projection from an export or the stream; print digests",
                            description=__doc__)
    replay.add_argument("file", nargs="?", metavar="FILE", help="an export from `rollout export`")
    replay.add_argument("--stream", action="store_true", help="read the live log instead of a file")
    replay.add_argument("--only", help="comma-separated consumer names (default: every registered one)")
    replay.add_argument("--out", help="fresh SQLite store to write (default: DATA_DIR/replay/replay-<ms>.sqlite)")
    add_json_flag(replay)
    replay.set_defaults(handler=handler(_replay))

    bt = sub.add_parser("backtest", help="run a candidate rollback policy over a recorded log", description=__doc__)
    bt.add_argument("file", nargs="?", metavar="FILE", help="an export from `rollout export`")
    bt.add_argument("--stream", action="store_true", help="read the live log instead of a file")
    bt.add_argument("--policy", required=True, help="candidate policy TOML (docs/rollback.md)")
    add_json_flag(bt)
    bt.set_defaults(handler=handler(_backtest))
