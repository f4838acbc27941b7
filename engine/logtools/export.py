"""Audit export: the log, or a time range of it, as a file anyone can verify and replay.

Two formats, chosen by the file name (``.jsonl`` or ``.msgpack``/``.mpk``):

* **JSONL** for people and other tools: a header line, then one line per log message
  ``{"seq", "subject", "time_ms", "events": [...]}`` (events as in ``docs/schemas``; items
  a consumer would dead-letter are kept as ``"rejected"`` with their reason and bytes in
  base64), then a footer line with the counts and the checksum.
* **msgpack** for speed: the same records as msgpack maps, each framed by a 4-byte
  big-endian length, with each message's original payload bytes, so a replay decodes
  exactly what the live consumers decoded.

A message stored with headers keeps them (``"headers"``): the engine's signature of each
control command (``Ro-Sig-Key``, ``Ro-Sig``), so ``rollout explain`` verifies it offline.
A JSONL line of a signed message also carries its exact payload (``"data"``,
base64): a signature covers those bytes, not the events re-encoded. The header line may
carry the public key ring (``"signing_keys"``, ``rollout export`` adds it).

Both keep every message's stream sequence, because projections receive it; that is what
makes a replay of an export give the live projections' digests exactly. Read back, either
format gives the same :class:`events.LogMessage` records the live consumers received (a
JSONL line's events re-encoded as one msgpack batch). The footer's
``sha256`` covers every byte before the footer; :func:`read_export` refuses a file whose
checksum does not match (edited, truncated or corrupt) instead of replaying it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from rollout_engine.consumers.folding import read_message
from rollout_engine.engine.sdk.signatures import SIG_HEADER
from rollout_engine.events import LogMessage, decode_json, encode_batch, encode_json, subjects

__all__ = [
    "EXPORT_FORMAT",
    "ExportError",
    "ExportSummary",
    "format_for",
    "parse_time",
    "read_export",
    "write_export",
]

EXPORT_FORMAT = "rollout-export"
EXPORT_VERSION = 1
_mp_enc = msgspec.msgpack.Encoder()
_json_enc = msgspec.json.Encoder()
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


class ExportError(ValueError):
    """An export file is unreadable, of an unknown format, or fails its checksum."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export holds: message and event counts, sequence range and checksum."""

    path: str
    format: str
    messages: int
    events: int
    rejected: int
    first_seq: int
    last_seq: int
    sha256: str


def parse_time(text: str | None, now_ms: int | None = None) -> int | None:
    """``--since``/``--until`` values: ms since the epoch, ISO 8601, or an age (``2h``, ``7d``)."""
    if text is None or text == "":
        return None
    value = text.strip()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if value.isdigit():
        return int(value)
    match = _RELATIVE.match(value)
    if match:
        return now - int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"time {text!r}: expected ms since the epoch, ISO 8601 (2026-01-31T12:00:00Z) "
                          "or an age such as 30m, 2h, 7d") from None
    if stamp.tzinfo is None:
        raise ExportError(f"time {text!r} has no time zone; add Z or +00:00")
    return int(stamp.timestamp() * 1000)


def format_for(path: str | Path) -> str:
    """``jsonl`` or ``msgpack`` from the file name."""
    name = str(path).lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".msgpack", ".mpk", ".mp")):
        return "msgpack"
    raise ExportError(f"{path}: unknown export format; name the file *.jsonl or *.msgpack")


def _json_record(msg: LogMessage) -> tuple[bytes, int, int]:
    good, bad = read_message(msg)
    parts = [b'{"seq":', str(msg.seq).encode(), b',"subject":', _json_enc.encode(msg.subject),
             b',"time_ms":', str(msg.time_ms).encode(), b',"events":[', b",".join(encode_json(e) for e in good), b"]"]
    if msg.headers:
        parts += [b',"headers":', _json_enc.encode(msg.headers)]
        if SIG_HEADER in msg.headers:
            parts += [b',"data":"', base64.b64encode(msg.data), b'"']
    if bad:
        rejected = [{"index": r.index, "reason": r.reason, "data": base64.b64encode(r.data).decode()} for r in bad]
        parts += [b',"rejected":', _json_enc.encode(rejected)]
    parts.append(b"}\n")
    return b"".join(parts), len(good), len(bad)


def _frame(data: bytes) -> bytes:
    """msgpack records are length-prefixed (4 bytes, big-endian) so a reader can split them."""
    return len(data).to_bytes(4, "big") + data


class _Writer:
    """Writes records and hashes every byte, so the footer can carry the checksum."""

    def __init__(self, handle: BinaryIO, fmt: str) -> None:
        self.handle, self.fmt, self.hash = handle, fmt, hashlib.sha256()

    def raw(self, data: bytes) -> None:
        self.hash.update(data)
        self.handle.write(data)

    def record(self, record: dict[str, Any]) -> None:
        self.raw(_json_enc.encode(record) + b"\n" if self.fmt == "jsonl" else _frame(_mp_enc.encode(record)))


async def write_export(
    messages: AsyncIterable[LogMessage],
    path: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    progress: Any = None,
) -> ExportSummary:
    """Write messages to ``path`` (format from its name); return the summary."""
    fmt = format_for(path)
    target = Path(path)
    tmp = target.with_name(target.name + ".part")
    n_msgs = n_events = n_bad = 0
    first = last = 0
    with open(tmp, "wb") as handle:
        out = _Writer(handle, fmt)
        out.record({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "stream": subjects.LOG_STREAM,
                    "exported_ms": int(time.time() * 1000), **(meta or {})})
        async for msg in messages:
            if fmt == "jsonl":
                line, good, bad = _json_record(msg)
                out.raw(line)
            else:
                events, rejected = read_message(msg)
                good, bad = len(events), len(rejected)
                record = {"seq": msg.seq, "subject": msg.subject, "time_ms": msg.time_ms, "data": msg.data}
                if msg.headers:
                    record["headers"] = msg.headers
                out.record(record)
            n_msgs += 1
            n_events += good
            n_bad += bad
            first = first or msg.seq
            last = msg.seq
            if progress is not None:
                progress(n_msgs, n_events)
        digest = out.hash.hexdigest()
        footer = {"footer": True, "messages": n_msgs, "events": n_events, "rejected": n_bad,
                  "first_seq": first, "last_seq": last, "sha256": digest}
        handle.write(_json_enc.encode(footer) + b"\n" if fmt == "jsonl" else _frame(_mp_enc.encode(footer)))
    tmp.replace(target)
    return ExportSummary(str(target), fmt, n_msgs, n_events, n_bad, first, last, digest)


def read_export(path: str | Path, *, verify: bool = True) -> tuple[dict[str, Any], list[LogMessage], dict[str, Any]]:
    """Read an export: (header, messages, footer); raise :class:`ExportError` when the
    checksum does not match or the file is not an export."""
    fmt = format_for(path)
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror or exc}") from None
    records: list[LogMessage] = []
    if fmt == "jsonl":
        end = blob.rstrip(b"\n").rfind(b"\n") + 1
        body, footer_line = blob[:end], blob[end:]
        try:
            footer = msgspec.json.decode(footer_line)
            lines = body.splitlines()
            header = msgspec.json.decode(lines[0]) if lines else {}
        except (msgspec.DecodeError, IndexError):
            raise ExportError(f"{path}: not a rollout export (no header/footer line); was it truncated?") from None
        _check(path, header, footer, hashlib.sha256(body).hexdigest() if verify else None)
        for line in lines[1:]:
            item = msgspec.json.decode(line)
            if "data" in item:  # the exact payload of a signed command
                data = base64.b64decode(item["data"])
            else:
                data = encode_batch([decode_json(_json_enc.encode(e)) for e in item.get("events", [])])
            records.append(LogMessage(item["seq"], item["subject"], data, item.get("time_ms", 0),
                                      item.get("headers") or None))
        return header, records, footer
    return _read_msgpack(path, blob, verify)


def _read_msgpack(path: str | Path, blob: bytes, verify: bool) -> tuple[dict[str, Any], list[LogMessage],
                                                                        dict[str, Any]]:
    """The msgpack format: each record decoded straight into a :class:`LogMessage`, while
    a thread computes the checksum of all but the file's last :data:`_TAIL` bytes
    (hashlib releases the GIL), finished here once the footer is found (measured on
    200,000 bench events: 60 ms against 95-140 ms for a decode, then a hash)."""
    view = memoryview(blob)
    split = max(0, len(view) - _TAIL) if verify else 0
    with ThreadPoolExecutor(1) as pool:
        hashing = pool.submit(hashlib.sha256, view[:split]) if verify else None
        try:
            header, records, footer, footer_at = _msgpack_records(path, view)
        except msgspec.DecodeError:
            raise ExportError(f"{path}: not a readable msgpack export (truncated or corrupt)") from None
        digest = None
        if hashing is not None:
            hashed = hashing.result()
            if footer_at >= split:
                hashed.update(view[split:footer_at])
            else:  # a footer longer than the tail (no writer makes one): hash the body whole
                hashed = hashlib.sha256(view[:footer_at])
            digest = hashed.hexdigest()
    _check(path, header, footer, digest)
    return header, records, footer


_TAIL = 1 << 16
"""Bytes at the end of a msgpack export hashed after the footer is found (the footer is a
few hundred bytes)."""
_any_record = msgspec.msgpack.Decoder()
_log_record = msgspec.msgpack.Decoder(LogMessage)


def _msgpack_records(path: str | Path, view: memoryview) -> tuple[dict[str, Any], list[LogMessage],
                                                                   dict[str, Any], int]:
    """(header, messages, footer, the footer's offset) of length-prefixed msgpack frames."""
    frames = _frames(view)
    first = next(frames, None)
    header = _any_record.decode(first[1]) if first is not None else None
    if not isinstance(header, dict):
        raise ExportError(f"{path}: not a rollout export (no header record)")
    records: list[LogMessage] = []
    for offset, payload in frames:
        try:
            records.append(_log_record.decode(payload))
        except msgspec.ValidationError as exc:
            item = _any_record.decode(payload)
            if not (isinstance(item, dict) and item.get("footer")):
                raise ExportError(f"{path}: the record at byte {offset} is not a log message ({exc}); the file "
                                  "was edited or corrupted: export it again") from None
            if offset + 4 + len(payload) != len(view):
                raise ExportError(f"{path}: the footer at byte {offset} is not the last record; the file was "
                                  "edited: export it again") from None
            return header, records, item, offset
    raise ExportError(f"{path}: no footer; the export was truncated")


def _frames(view: memoryview) -> Iterator[tuple[int, memoryview]]:
    """Yield (start offset, payload) of length-prefixed msgpack frames."""
    offset, size = 0, len(view)
    while offset < size:
        if offset + 4 > size:
            raise msgspec.DecodeError("truncated frame header")
        length = int.from_bytes(view[offset:offset + 4], "big")
        end = offset + 4 + length
        if end > size:
            raise msgspec.DecodeError("truncated frame")
        yield offset, view[offset + 4:end]
        offset = end


def _check(path: str | Path, header: dict[str, Any], footer: dict[str, Any], digest: str | None) -> None:
    """Refuse what is not an export, or (``digest``: the checksum of every byte before the
    footer; None: not verified) one whose footer says another checksum."""
    if header.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: not a rollout export (header format {header.get('format')!r})")
    if digest is not None and digest != footer.get("sha256"):
        raise ExportError(f"{path}: checksum mismatch (file says {footer.get('sha256')}, content is {digest}); "
                          "the file was edited, truncated or corrupted; export it again")
