"""``rollout explain`` over a prepared export: verifies, reproduces, names a tampered event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from rollout_engine.consumers.folding import read_message
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.logtools.explain import ExplainError, explain, render
from rollout_engine.engine.logtools.export import write_export
from rollout_engine.engine.stack.signing import CommandSigner
from rollout_engine.events import (
    KillSwitch,
    LogMessage,
    Outcome,
    encode,
    encode_batch,
    subjects,
    transitions,
)

R = "checkout-v2"


def _log(signer: CommandSigner) -> tuple[list[LogMessage], KillSwitch]:
    """A log as the live stack writes it: producer batches, then the signed kill right after its cause."""
    fold, out, seq = RollbackProjection(), [], 0
    kill = None
    for event in runs(R, 100, canary_pct=50, candidate=Profile(quality=82.0)):
        seq += 1
        out.append(LogMessage(seq, subjects.for_event(event), encode_batch([event]), event.time_ms))
        for command in fold.apply(event, seq):
            if isinstance(command, KillSwitch) and kill is None:
                kill = command
                subject, data = subjects.for_event(command), encode(command)
                seq += 1
                out.append(LogMessage(seq, subject, data, event.time_ms, signer.headers(subject, data)))
                fold.apply(command, seq)
    assert kill is not None
    return out, kill


async def _messages(items: list[LogMessage]):  # type: ignore[no-untyped-def]
    for item in items:
        yield item


def _export(items: list[LogMessage], path: Path, signer: CommandSigner) -> Path:
    meta = {"signing_keys": msgspec.to_builtins(signer.ring)}
    asyncio.run(write_export(_messages(items), path, meta=meta))
    return path


@pytest.mark.parametrize("name", ["log.msgpack", "log.jsonl"])
def test_explain_verifies_and_reproduces_a_kill(tmp_path: Path, name: str) -> None:
    signer = CommandSigner.ephemeral()
    items, kill = _log(signer)
    ex = explain(_export(items, tmp_path / name, signer), kill.id)
    assert ex.ok, ex.faults
    assert ex.signature.startswith("verified") and ex.recomputed.startswith("equal")
    assert {e["guard"] for e in ex.evidence} == {"quality"} and all(e["ok"] for e in ex.evidence)
    assert ex.guards[0]["guard"] == "quality" and ex.decisive["id"] == kill.cause_id
    text = render(ex)
    assert "guard quality [threshold, last_n]: observed 13 vs threshold 5, baseline 95" in text
    assert text.endswith("explained: the command verifies and its judgement reproduces")


def test_a_tampered_evidence_event_is_named(tmp_path: Path) -> None:
    signer = CommandSigner.ephemeral()
    items, kill = _log(signer)
    [cand] = [e for e in kill.evidence if e.variant == "candidate"]
    judged = [m for m in items if cand.first_seq <= m.seq <= cand.last_seq
              and any(isinstance(e, Outcome) and e.variant == "candidate" for e in read_message(m)[0])]
    assert len(judged) == cand.count
    target = judged[len(judged) // 2]
    [event] = read_message(target)[0]
    forged = msgspec.structs.replace(event, quality=99.0)
    items = [LogMessage(m.seq, m.subject, encode_batch([forged]), m.time_ms) if m is target else m for m in items]
    ex = explain(_export(items, tmp_path / "log.msgpack", signer), kill.id)
    assert not ex.ok
    assert any(f"seq {target.seq} id {event.id}" in f for f in ex.faults), ex.faults
    assert "NOT explained" in render(ex) and "MISMATCH" in render(ex)


def test_a_forged_or_unsigned_kill_fails_verification(tmp_path: Path) -> None:
    signer, other = CommandSigner.ephemeral(), CommandSigner.ephemeral()
    items, kill = _log(signer)
    unsigned = [LogMessage(m.seq, m.subject, m.data, m.time_ms) for m in items]
    ex = explain(_export(unsigned, tmp_path / "unsigned.msgpack", signer), kill.id)
    assert not ex.ok and ex.signature.startswith("unsigned")
    forged = [LogMessage(m.seq, m.subject, m.data, m.time_ms, other.headers(m.subject, m.data)) if m.headers else m
              for m in items]
    ex = explain(_export(forged, tmp_path / "forged.msgpack", signer), kill.id)
    assert not ex.ok and ex.signature.startswith("unknown key")
    with pytest.raises(ExplainError, match="no command"):
        explain(tmp_path / "forged.msgpack", "no-such-id")


def test_a_replayed_signed_command_is_named_stale(tmp_path: Path) -> None:
    """An old signed kill re-published after a resume still verifies; explain names the replay."""
    signer = CommandSigner.ephemeral()
    items, kill = _log(signer)
    original = next(m for m in items if m.headers)
    resume = transitions.resume_command(kill.after, 5.0, id="resume-1", rollout=R, time_ms=kill.time_ms + 10,
                                        producer="api", actor="alice", reason="fixed")
    subject, data = subjects.for_event(resume), encode(resume)
    seq = items[-1].seq
    items += [LogMessage(seq + 1, subject, data, resume.time_ms, signer.headers(subject, data)),
              LogMessage(seq + 2, original.subject, original.data, resume.time_ms + 1, original.headers)]
    ex = explain(_export(items, tmp_path / "replayed.msgpack", signer), kill.id)
    assert ex.signature.startswith("verified") and ex.recomputed.startswith("equal")
    assert [f for f in ex.faults if f.startswith(f"seq {seq + 2}: a copy of {kill.id}") and "replay" in f]
    ex = explain(tmp_path / "replayed.msgpack", "resume-1")
    assert ex.ok and ex.order.startswith("in order"), ex.faults
