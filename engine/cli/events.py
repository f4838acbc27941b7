"""``rollout events ROLLOUT`` and ``rollout export FILE``: read the log.

``events`` prints one rollout's events and control commands in log order (``--follow``
keeps printing new ones); with ``--json`` one JSON object per line, so it pipes into
``jq``. A rollout with nothing in the log is an error (exit 2), unless ``--follow`` waits
for its first event. ``export`` writes the log, or a time range, as JSONL or msgpack with
a checksum (docs/operations.md describes the format). Text from events is sanitized
before printing.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.api.control_log import known_rollouts
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
from rollout_engine.engine.logtools.export import ExportError, parse_time, write_export
from rollout_engine.engine.logtools.reader import read_messages
from rollout_engine.engine.sdk.signatures import KV_KEY, PUBLIC_FILE
from rollout_engine.events import kind_of, subjects
from rollout_engine.events.ids import is_token

__all__ = ["describe_event", "register"]

_COLORS = {"kill_switch": "31", "resume": "32", "config": "36", "escalation": "33", "would_kill": "35"}


def describe_event(event: Any) -> str:
    """One line for a person: the fields that matter for each kind."""
    kind = kind_of(event)
    if kind == "decision":
        return f"unit={event.unit} -> {event.variant} ({event.reason}, canary {event.canary_pct:g}%)"
    if kind == "outcome":
        quality = "" if event.quality is None else f" quality={event.quality:g}"
        return f"decision={event.decision_id} {event.variant}: {event.verdict}{quality}"
    if kind == "metric":
        return f"{event.variant} {event.name}={event.value:g}{'' if event.unit == '1' else ' ' + event.unit}"
    parts = []
    for field in ("action", "actor", "reason", "trigger", "policy_name", "decision_id", "status"):
        value = getattr(event, field, None)
        if value:
            parts.append(f"{field}={value}")
    after = getattr(event, "after", None)
    if after is not None and hasattr(after, "canary_pct"):
        parts.append(f"-> canary {after.canary_pct:g}% kill={'on' if after.kill_switch else 'off'}"
                     + (" paused" if getattr(after, "paused", False) else ""))
    return " ".join(parts)


def _stamp(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def _events(args: argparse.Namespace) -> int:
    if not is_token(args.rollout):
        raise CliError(f"rollout {args.rollout!r}: expected 1-64 of A-Z a-z 0-9 _ -", "invalid")
    try:
        since = parse_time(args.since)
    except ExportError as exc:
        raise CliError(str(exc), "invalid") from None
    settings = settings_from(args)
    nc = await connect(settings, name="rollout-events", reconnect=args.follow)
    printed = 0
    try:
        js = nc.jetstream()
        if not await known_rollouts(js, args.rollout):
            unknown = (f"unknown rollout {args.rollout!r}: nothing in the log under that name; "
                       "`rollout status` lists the rollouts")
            if not args.follow:
                raise CliError(unknown, "not_found")
            sys.stderr.write(f"rollout: {unknown}; waiting for its first event (Ctrl-C stops)\n")
        async for msg in read_messages(js, subjects.rollout_filters(args.rollout), since_ms=since, follow=args.follow):
            for event in events_of(msg):
                printed += 1
                if args.json:
                    record = {"seq": msg.seq, "subject": msg.subject, "event": msgspec.to_builtins(event)}
                    sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
                else:
                    kind = kind_of(event)
                    print(f"{_stamp(event.time_ms)} #{msg.seq:<8} {color(f'{kind:<12}', _COLORS.get(kind, '0'))} "
                          f"{sanitize(describe_event(event), 300)}")
            if args.follow:
                sys.stdout.flush()
            if args.limit and printed >= args.limit:
                break
    finally:
        await nc.close()
    if printed == 0 and not args.json:
        print(f"no events for rollout {sanitize(args.rollout)}" + (f" since {args.since}" if args.since else ""))
    return 0


async def _export(args: argparse.Namespace) -> int:
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    filters = subjects.rollout_filters(args.rollout) if args.rollout else None
    settings = settings_from(args)
    nc = await connect(settings, name="rollout-export", reconnect=False)
    try:
        js = nc.jetstream()
        meta = {"since_ms": since, "until_ms": until, "rollout": args.rollout,
                "signing_keys": await _signing_keys(js, settings)}
        summary = await write_export(read_messages(js, filters, since_ms=since, until_ms=until), args.file, meta=meta)
    except ExportError as exc:
        raise CliError(str(exc)) from None
    finally:
        await nc.close()
    if args.json:
        print_json(summary)
    else:
        print(f"exported {summary.messages} messages ({summary.events} events, {summary.rejected} rejected) "
              f"seq {summary.first_seq}..{summary.last_seq} to {summary.path} [{summary.format}] "
              f"sha256 {summary.sha256}")
    return 0


async def _signing_keys(js: Any, settings: Any) -> dict[str, Any] | None:
    """The public key ring (KV ``engine.signing_keys``, else ``DATA_DIR/signing-keys.json``), so
    an auditor can check each command's signature from the export alone (``rollout explain``)."""
    try:
        entry = await (await js.key_value(subjects.STATE_BUCKET)).get(KV_KEY)
        return msgspec.json.decode(entry.value or b"null")  # type: ignore[no-any-return]
    except Exception:  # no bucket, no key, or no permission to read it: try the file
        try:
            return msgspec.json.decode((Path(settings.data_dir) / PUBLIC_FILE).read_bytes())  # type: ignore[no-any-return]
        except (OSError, msgspec.DecodeError):
            return None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    events = sub.add_parser("events", help="one rollout's events and commands, in log order", description=__doc__)
    events.add_argument("rollout", metavar="ROLLOUT")
    events.add_argument("--since", help="ms since the epoch, ISO 8601, or an age (30m, 2h, 7d)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events (Ctrl-C stops)")
    events.add_argument("--limit", type=int, default=0, help="stop after this many events")
    add_json_flag(events)
    events.set_defaults(handler=handler(_events))

    export = sub.add_parser("export", help="write the log (or a range) as JSONL or msgpack with a checksum",
                            description=__doc__)
    export.add_argument("file", metavar="FILE", help="output file: *.jsonl or *.msgpack")
    export.add_argument("--since", help="from this store time (ms, ISO 8601, or an age such as 7d)")
    export.add_argument("--until", help="up to this store time")
    export.add_argument("--rollout", help="only this rollout's events and commands (no ticks)")
    add_json_flag(export)
    export.set_defaults(handler=handler(_export))
