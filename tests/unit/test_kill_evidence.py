"""A kill names its evidence: the (seq, value) samples its decisive guards judged, with a digest."""

from __future__ import annotations

import hashlib
import struct

import msgspec

from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.proof import (
    first_difference,
    sample_digest,
    sample_marks,
    window_samples,
)
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.consumers.windows import Series
from rollout_engine.events import KillEvidence, KillSwitch, decode, encode
from tests.unit.test_rollback_projection import R, fold, kills


def test_digest_is_blake2b_of_little_endian_seq_value_pairs_in_order() -> None:
    samples = [(3, 82.0), (7, 81.5), (7, 80.0)]
    expected = hashlib.blake2b(b"".join(struct.pack("<qd", s, v) for s, v in samples), digest_size=16).hexdigest()
    assert sample_digest(samples) == expected
    assert sample_digest(samples[::-1]) != expected  # order is part of it: log order
    assert sample_digest([]) == hashlib.blake2b(b"", digest_size=16).hexdigest()
    assert len(sample_marks(samples)) == 6


def test_first_difference_names_the_changed_sample() -> None:
    samples = [(10 + i, 80.0 + i) for i in range(40)]
    ev = KillEvidence(guard="quality", variant="candidate", metric="quality", count=40, first_seq=10, last_seq=49,
                      digest=sample_digest(samples), marks=sample_marks(samples))
    assert first_difference(samples, ev) is None
    tampered = list(samples)
    tampered[17] = (27, 99.0)
    assert first_difference(tampered, ev) == 17
    assert first_difference(samples[:-1], ev) == 39  # a sample missing: the first index past what is there
    assert first_difference(samples, msgspec.structs.replace(ev, marks=b"")) is None
    assert first_difference(tampered, msgspec.structs.replace(ev, marks=b"")) == 0  # digest only: no index


def test_series_keeps_the_seq_of_each_sample_through_trims_and_snapshots() -> None:
    series = Series()
    for i in range(50):
        series.push(float(i), 1_000 + i, 0, 10, 10, seq=100 + i)
    assert series.window_entries("last_n", 0, 10) == [(140 + i, 40.0 + i) for i in range(10)]
    restored = Series.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(series.state()),
                                                        type=type(series.state())))
    assert restored.window_entries("last_n", 0, 10) == series.window_entries("last_n", 0, 10)
    old = series.state()
    old_restored = Series.from_state(msgspec.structs.replace(old, seqs=b""))  # a snapshot from before seqs
    assert [s for s, _ in old_restored.window_entries("last_n", 0, 10)] == [0] * 10


def test_a_kill_names_the_samples_of_its_decisive_guard_for_both_variants() -> None:
    p = RollbackProjection()
    log = runs(R, 100, canary_pct=50, candidate=Profile(quality=82.0))
    [kill] = kills(fold(p, log))
    ev = {(e.guard, e.variant): e for e in kill.evidence}
    assert set(ev) == {("quality", "candidate"), ("quality", "baseline")}
    cand = ev["quality", "candidate"]
    assert cand.count == kill.breaches[0].candidate_n == 30 and cand.window == "last_n" and cand.metric == "quality"
    assert 1 <= cand.first_seq < cand.last_seq and len(cand.marks) == 2 * cand.count
    assert ev["quality", "baseline"].count == kill.breaches[0].baseline_n
    # the same samples read back from a re-fold up to the cause give the same digest
    again = RollbackProjection()
    seq = 1
    for event in log:
        out = again.apply(event, seq)
        if any(isinstance(c, KillSwitch) for c in out):
            break
        seq += 1
    samples = window_samples(again._stats[R], R, "candidate", "quality", "last_n")
    assert sample_digest(samples) == cand.digest and first_difference(samples, cand) is None


def test_a_kill_without_evidence_still_decodes_and_evidence_round_trips() -> None:
    p = RollbackProjection()
    [kill] = kills(fold(p, runs(R, 100, candidate=Profile(quality=82.0))))
    assert decode(encode(kill)) == kill
    old = msgspec.structs.replace(kill, evidence=[])
    assert b"evidence" not in encode(old) or decode(encode(old)).evidence == []
