"""The evidence a kill switch names: which events' samples its decisive guards judged.

A kill records, per failing guard and per variant the guard reads (the candidate; the
baseline too for a relative guard), the samples of the guard's window at the moment of
the kill as :class:`events.KillEvidence`: their count, first and last stream sequence,
a digest and a 2-byte mark per sample (low 16 bits of its CRC-32). Each sample is the
pair ``(seq, value)``: the stream sequence of the message it came in (the fold's ``apply(event, seq)``, kept in a
parallel array of ``consumers.windows.Series``) and the value the guard read. The fold
keeps no event ids (32 bytes a sample), and a value is what changes a verdict; the
sequence names the message, where ``rollout explain`` reads the event's id.

So ``rollout explain`` (``engine/logtools/explain.py``) can re-fold an export, take the
same windows, and check that exactly the named events were judged: a digest that differs
means an evidence event's value differs from the one judged, and the first mark that
differs says which sample (hence which seq and event). Computed only when a kill is made:
nothing here runs per sample.

The ``all`` window keeps no list of every sample: its evidence is the last N samples (the
ring), and the statistical tests' full epoch is reproduced by the re-fold itself.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any
from zlib import crc32

from rollout_engine.consumers.rollback.guards import GuardResult
from rollout_engine.events import KillEvidence
from rollout_engine.events.schema import MAX_BREACHES, MAX_MARKS

__all__ = ["Sample", "first_difference", "kill_evidence", "sample_digest", "sample_marks", "window_samples"]

Sample = tuple[int, float]
"""``(stream seq, value)`` of one judged sample."""

_PAIR = struct.Struct("<qd")


def sample_digest(samples: Sequence[Sample]) -> str:
    """Hex blake2b-128 of the samples as little-endian ``(int64 seq, float64 value)`` pairs, in order."""
    pack = _PAIR.pack
    return hashlib.blake2b(b"".join([pack(seq, value) for seq, value in samples]), digest_size=16).hexdigest()


def _mark(seq: int, value: float) -> bytes:
    return (crc32(_PAIR.pack(seq, value)) & 0xFFFF).to_bytes(2, "little")


def sample_marks(samples: Sequence[Sample]) -> bytes:
    """Two bytes per sample, the low 16 bits of the CRC-32 of its pair (little-endian): enough
    to find the one that changed (the digest, not the marks, is what proves integrity), and
    ~0.3 us a sample where a blake2b per sample cost ~1.4 us."""
    return b"".join([_mark(seq, value) for seq, value in samples])


def first_difference(samples: Sequence[Sample], evidence: KillEvidence) -> int | None:
    """Index of the first sample that does not match ``evidence``'s marks (None: all match).

    Samples past the recorded count, or short of it, differ at the first missing index;
    evidence without marks (a window over :data:`MAX_MARKS` samples) says only "index 0"."""
    if sample_digest(samples) == evidence.digest and len(samples) == evidence.count:
        return None
    marks = evidence.marks
    if not marks:
        return 0
    for i, (seq, value) in enumerate(samples):
        if 2 * i + 2 > len(marks) or _mark(seq, value) != marks[2 * i:2 * i + 2]:
            return i
    return len(samples)


def window_samples(stats: Any, rollout: str, variant: str, metric: str, window: str) -> list[Sample]:
    """The ``(seq, value)`` samples of one window of a canary-stats fold, oldest first."""
    series = stats.series(rollout, variant, metric)
    if series is None:
        return []
    return series.window_entries(window, stats.now_ms(rollout) - stats.window_ms, stats.last_n)  # type: ignore[no-any-return]


def kill_evidence(stats: Any, rollout: str, failing: Sequence[GuardResult],
                  variants: tuple[str, str]) -> list[KillEvidence]:
    """The :class:`events.KillEvidence` of each failing guard (candidate, then baseline if relative).

    ``stats`` is the rollback consumer's canary-stats fold of ``rollout`` (its live
    evidence epoch); srm is judged on decision counts, not samples, and names none."""
    out: list[KillEvidence] = []
    for result in failing:
        guard = result.guard
        if result.kind == "srm":
            continue
        for variant in (variants[1], variants[0]) if guard.relative else (variants[1],):
            samples = window_samples(stats, rollout, variant, guard.metric, guard.window)
            out.append(KillEvidence(
                guard=guard.name, variant=variant, metric=guard.metric, window=guard.window, count=len(samples),
                first_seq=samples[0][0] if samples else 0, last_seq=samples[-1][0] if samples else 0,
                digest=sample_digest(samples), marks=sample_marks(samples) if len(samples) <= MAX_MARKS else b""))
    return out[:2 * MAX_BREACHES]
