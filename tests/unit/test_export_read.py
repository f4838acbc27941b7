"""Reading a msgpack export back (engine/logtools/export.py ``read_export``): every record
decoded straight into a LogMessage while a thread hashes all but the file's tail. The
records and the refusals must be those of a decode-then-hash reader: the same messages,
and a file edited anywhere (in the hashed body, in the tail, in a record's types, in the
footer's place) refused with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from rollout_engine.engine.logtools import export
from rollout_engine.engine.logtools.export import ExportError, read_export, write_export
from rollout_engine.events import LogMessage, Metric, encode_batch, subjects


def _messages(count: int) -> list[LogMessage]:
    out = []
    for seq in range(1, count + 1):
        batch = [Metric(id=f"m{seq}-{k}", rollout="shop", time_ms=1_700_000_000_000 + seq, producer="p",
                        variant="candidate", name="latency_ms", value=float(seq + k)) for k in range(5)]
        headers = {"Ro-Sig-Key": "k1", "Ro-Sig": f"sig{seq}"} if seq % 7 == 0 else None
        out.append(LogMessage(seq, subjects.event("shop", "metric"), encode_batch(batch), 1_700_000_000_000 + seq,
                              headers))
    return out


async def _write(path: Path, messages: list[LogMessage]) -> None:
    async def source() -> AsyncIterator[LogMessage]:
        for message in messages:
            yield message
    await write_export(source(), path)


@pytest.mark.parametrize("count", [3, 2_000])  # within the hashed-later tail, and far past it
async def test_the_records_come_back_as_written(tmp_path: Path, count: int) -> None:
    path = tmp_path / "log.msgpack"
    messages = _messages(count)
    await _write(path, messages)
    assert (path.stat().st_size > export._TAIL) == (count > 3)
    header, records, footer = read_export(path)
    assert records == messages
    assert header["format"] == "rollout-export" and footer["messages"] == count


@pytest.mark.parametrize("where", [0.3, -200])  # in the body hashed by the thread, in the tail hashed after
async def test_an_edited_byte_is_a_checksum_mismatch(tmp_path: Path, where: float) -> None:
    path = tmp_path / "log.msgpack"
    await _write(path, _messages(2_000))
    blob = bytearray(path.read_bytes())
    footer_at = len(blob) - 400
    start = int(len(blob) * where) if where > 0 else footer_at + int(where)
    index = blob.find(b"latency_ms", start)
    assert 0 < index < footer_at
    blob[index:index + 10] = b"latencz_ms"
    path.write_bytes(bytes(blob))
    with pytest.raises(ExportError, match="checksum mismatch"):
        read_export(path)
    assert len(read_export(path, verify=False)[1]) == 2_000


async def test_a_record_of_the_wrong_shape_is_named_by_its_place(tmp_path: Path) -> None:
    path = tmp_path / "log.msgpack"
    await _write(path, _messages(3))
    frames = list(export._frames(memoryview(path.read_bytes())))
    bad = msgspec.msgpack.encode({"seq": "one", "subject": "x", "data": b""})
    records = [bytes(frames[0][1]), bad, *(bytes(p) for _o, p in frames[2:-1])]
    body = b"".join(export._frame(r) for r in records)
    footer = msgspec.msgpack.decode(bytes(frames[-1][1]))
    footer["sha256"] = hashlib.sha256(body).hexdigest()
    path.write_bytes(body + export._frame(msgspec.msgpack.encode(footer)))
    with pytest.raises(ExportError, match=f"record at byte {frames[1][0]} is not a log message"):
        read_export(path)


async def test_a_truncated_or_reordered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.msgpack"
    await _write(path, _messages(3))
    blob = path.read_bytes()
    frames = list(export._frames(memoryview(blob)))
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes(blob[:-10])
    with pytest.raises(ExportError, match="truncated or corrupt"):
        read_export(cut)
    no_footer = tmp_path / "no-footer.msgpack"
    no_footer.write_bytes(blob[:frames[-1][0]])
    with pytest.raises(ExportError, match="no footer"):
        read_export(no_footer)
    moved = tmp_path / "moved.msgpack"
    order = [frames[0], frames[-1], *frames[1:-1]]
    moved.write_bytes(b"".join(export._frame(bytes(p)) for _o, p in order))
    with pytest.raises(ExportError, match=r"footer at byte \d+ is not the last record"):
        read_export(moved)
    empty = tmp_path / "empty.msgpack"
    empty.write_bytes(b"")
    with pytest.raises(ExportError, match="no header record"):
        read_export(empty)
