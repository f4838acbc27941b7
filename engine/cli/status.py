"""``rollout status [ROLLOUT]``: the health view an on-call engineer reads first.

Without ROLLOUT: the server, the streams, each consumer's lag and the first page of
rollouts (100 by name; --limit up to 1000) with their control state and phase; the last
line gives the command for the next page (--cursor). --state and --prefix filter the
listing; --all prints every page and nothing else (with --json one JSON object per page
and line), for scripts. With ROLLOUT: its control state, the last command (who, when,
why, and the numbers that caused it), per-variant stats and the thresholds in force.
Also the engine's own health (engine/stack/health.py): the children of ``rollout up``
with their restarts and crash loops, on a cluster its nodes, stream leaders and
partition owners, and any engine message whose id another publisher took first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from rollout_engine.engine.api.rollout_index import DEFAULT_LIMIT, MAX_LIMIT
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    color,
    handler,
    print_json,
    settings_from,
)
from rollout_engine.engine.cli.rollout_status import next_page_hint, rollouts_page, show_rollout
from rollout_engine.events import subjects, transitions

__all__ = ["collect_status", "register"]


async def collect_status(js: Any, url: str) -> dict[str, Any]:
    """Streams with their sizes, consumers with lag (pending) and unacked counts."""
    streams: list[dict[str, Any]] = []
    for name in (subjects.LOG_STREAM, subjects.DLQ_STREAM, f"KV_{subjects.STATE_BUCKET}", subjects.ACK_STREAM):
        try:
            info = await js.stream_info(name)
            listed = await js.consumers_info(name)
        except NotFoundError:
            streams.append({"name": name, "exists": False})
            continue
        except (NatsError, TimeoutError) as exc:  # a cluster electing a leader (a node lost): say so, go on
            streams.append({"name": name, "exists": True, "unavailable": f"{type(exc).__name__}: {exc}"[:200],
                            "consumers": []})
            continue
        consumers = []
        for consumer in listed:
            consumers.append(
                {
                    "name": consumer.name,
                    "lag": consumer.num_pending,
                    "ack_pending": consumer.num_ack_pending,
                    "redelivered": consumer.num_redelivered,
                    "delivered_seq": consumer.delivered.stream_seq if consumer.delivered else 0,
                }
            )
        streams.append(
            {
                "name": name,
                "exists": True,
                "subjects": list(info.config.subjects or []),
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
                "consumers": consumers,
            }
        )
    from rollout_engine.engine.stack.health import cluster_view, read_health

    durables = sorted({c["name"] for s in streams if s["exists"] for c in s["consumers"]})
    durables = sorted(set(durables) | _engine_durables())
    server_name = ""
    with contextlib.suppress(Exception):
        server_name = js._nc._server_info.get("server_name", "")
    return {"server": url, "streams": streams, "cluster": await cluster_view(js, server_name),
            **await read_health(js, durables)}


def _engine_durables() -> set[str]:
    """The engine's durable names (a consumer not running right now may still have an alert)."""
    try:
        from rollout_engine.consumers import registry
    except ImportError:  # pragma: no cover - a slim install without the consumers
        return set()
    return set(registry.names())


def _listing_request(args: argparse.Namespace) -> dict[str, Any]:
    """The API request of the listing flags (the API validates them and names the flag)."""
    given = {"limit": args.limit, "cursor": args.cursor, "state": args.state, "prefix": args.prefix}
    return {k: v for k, v in given.items() if v is not None}


async def _all_pages(args: argparse.Namespace) -> int:
    """Every page, printed as it arrives: a script's way through 100,000 rollouts."""
    request = _listing_request(args)
    nc = await connect(settings_from(args), name="rollout-status", reconnect=False)
    try:
        while True:
            reply = await rollouts_page(nc, request)
            if args.json:
                sys.stdout.write(msgspec.json.encode({k: reply[k] for k in ("rollouts", "next_cursor")}).decode()
                                 + "\n")
            else:
                sys.stdout.write("".join(f"rollout {row['line']}\n" for row in reply["rollouts"]))
            sys.stdout.flush()
            if reply["next_cursor"] is None:
                return 0
            request["cursor"] = reply["next_cursor"]
    finally:
        await nc.close()


async def _run(args: argparse.Namespace) -> int:
    if args.watch and not args.rollout:
        raise CliError("--watch follows one rollout: give ROLLOUT (`rollout status ROLLOUT --watch`)", "usage")
    request = _listing_request(args)
    if getattr(args, "rollout", None):
        if request or args.all:
            raise CliError("--limit, --cursor, --state, --prefix and --all page through the listing; "
                           "leave out ROLLOUT (`rollout status --state aborted`)", "usage")
        return await show_rollout(args)
    if args.all:
        return await _all_pages(args)
    settings = settings_from(args)
    nc = await connect(settings, name="rollout-status", reconnect=False)
    try:
        status = await collect_status(nc.jetstream(), nc.connected_url.geturl() if nc.connected_url else "")
        try:
            page = await rollouts_page(nc, request)
        except CliError as exc:
            if request or exc.code == "invalid":
                raise
            page = {"rollouts": [], "next_cursor": None, "unavailable": str(exc)}  # e.g. a credential without the API
        status.update(rollouts=page["rollouts"], next_cursor=page["next_cursor"],
                      **{k: page[k] for k in ("total", "phases", "unavailable") if k in page})
    finally:
        await nc.close()
    if args.json:
        print_json(status)
        return 0
    print(f"server  {status['server']}  {color('up', '32')}")
    for stream in status["streams"]:
        if not stream["exists"]:
            print(f"stream  {stream['name']}: {color('missing', '31')} (run `rollout up` to provision)")
            continue
        if "unavailable" in stream:
            print(f"stream  {stream['name']}: {color('UNAVAILABLE', '31')} ({stream['unavailable']}; "
                  "a cluster may be electing a leader: try again in a few seconds)")
            continue
        print(f"stream  {stream['name']}: {stream['messages']} msgs, {stream['bytes']} bytes, "
              f"seq {stream['first_seq']}..{stream['last_seq']}, R{stream['replicas']}")
        for consumer in stream["consumers"]:
            lag = consumer["lag"]
            print(f"  consumer {consumer['name']}: lag {color(str(lag), '33' if lag else '32')}, "
                  f"unacked {consumer['ack_pending']}")
    from rollout_engine.engine.stack.health import text_lines

    for line in text_lines(status, status.get("cluster")):
        alarm = line.startswith(("ALERT", "STALE")) or "CRASH_LOOP" in line or "OFFLINE" in line or "NONE" in line
        print(color(line, "31") if alarm else line)
    if "unavailable" in status:  # e.g. the API is still reading the rollouts from the log: say so, and what to do
        print(f"rollouts: {color('not listed', '33')}: {status['unavailable']}")
    for item in status["rollouts"]:
        print(f"rollout {item['line']}")
    if "total" in status:
        print(next_page_hint(status, request))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("status", help="server, streams, consumers and their lag", description=__doc__)
    parser.add_argument("rollout", nargs="?", metavar="ROLLOUT",
                        help="one rollout: control state, last command and breaches, stats, thresholds")
    parser.add_argument("--watch", "-w", action="store_true",
                        help="with ROLLOUT: follow it live (pushed by NATS; redrawn on a terminal, one line per "
                             "change to a pipe, one JSON object per line with --json) until Ctrl-C")
    page = parser.add_argument_group("listing (without ROLLOUT)")
    page.add_argument("--limit", type=int, metavar="N",
                      help=f"rollouts per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); pages go by name")
    page.add_argument("--cursor", "--continue", dest="cursor", metavar="CURSOR",
                      help="start after this cursor: the next_cursor of the previous page (the text output's last "
                           "line gives the command)")
    page.add_argument("--state", metavar="PHASE",
                      help="only rollouts in this phase: " + ", ".join(transitions.PHASES)
                           + " (killed and running are accepted for aborted and progressing)")
    page.add_argument("--prefix", metavar="TEXT", help="only rollouts whose name starts with TEXT")
    page.add_argument("--all", action="store_true",
                      help="print every page and nothing else, for scripts (with --json: one JSON object per page "
                           "and line, each with its rollouts and next_cursor)")
    add_json_flag(parser)
    parser.set_defaults(handler=handler(_run))
