"""``rollout explain``: one control command reproduced offline from an audit export.

An auditor holds an export file (``rollout export``) and the engine's public keys;
no server, no secret. For one command id this:

1. finds the command's message and checks its Ed25519 signature (``Ro-Sig-Key``,
   ``Ro-Sig``, kept by the export) against the public key ring: ``--keys FILE``, else
   the ring the export's header carries (convenient, but whoever holds the file could
   have replaced it: an auditor passes a copy of ``signing-keys.json`` they trust);
2. names the policy in force: the latest ConfigChange with a policy for that rollout
   before the command in the log;
3. re-runs the judgement: a fresh rollback fold (the live consumer's own code, so the
   same policy versions, windows and tests) over the rollout's messages and the ticks of
   the export up to the event that caused the kill; the command it emits there must equal the logged one field for field
   (guards, figures, thresholds, evidence);
4. checks the evidence the kill names (``consumers/rollback/proof.py``): the samples of
   each decisive guard's window in the re-fold must give the recorded count, sequences and
   digest. A sample whose value differs is named by its stream sequence and event id.

Anything that does not hold is a *fault*; an explanation with faults fails (the CLI exits
1). The export must hold the log from the rollout's start (or from its last re-enable)
to the command, ticks included: an export of one rollout (``--rollout``) has no ticks,
and a kill made on a tick then recomputes differently. One approximation: the re-fold
de-duplicates producer event ids per rollout as the live fold does, but a live seen set
that reached its cap (consumers/dedupe.py) evicted ids of every rollout, so a duplicate
re-sent after such an eviction may be folded differently (reported as a difference).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from rollout_engine.consumers.control import apply_command
from rollout_engine.consumers.dedupe import SeenIds
from rollout_engine.consumers.folding import read_fresh, read_message
from rollout_engine.consumers.rollback.projection import RollbackProjection
from rollout_engine.consumers.rollback.proof import first_difference, window_samples
from rollout_engine.engine.logtools.export import ExportError, read_export
from rollout_engine.engine.sdk.signatures import KEY_HEADER, ControlVerifier, KeyRing
from rollout_engine.events import (
    AnyEvent,
    ConfigChange,
    ControlState,
    KillEvidence,
    KillSwitch,
    LogMessage,
    Metric,
    Outcome,
    kind_of,
    subjects,
)

__all__ = ["ExplainError", "Explanation", "dumps", "explain", "load_ring", "render"]


class ExplainError(ValueError):
    """The explanation could not start: no such command, an unreadable export or key file."""


@dataclass(slots=True)
class Explanation:
    """What ``rollout explain`` found about one command (``faults`` empty: it holds)."""

    command_id: str
    seq: int
    subject: str
    kind: str
    rollout: str
    reason: str
    signature: str = ""
    key_id: str = ""
    policy: dict[str, Any] = field(default_factory=dict)
    guards: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    decisive: dict[str, Any] = field(default_factory=dict)
    recomputed: str = "not applicable"
    order: str = ""
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)  # type: ignore[assignment]
        out["ok"] = self.ok
        return out


def load_ring(path: str | Path) -> KeyRing:
    """A public key ring file (``DATA_DIR/signing-keys.json``)."""
    try:
        return KeyRing.decode(Path(path).read_bytes())
    except OSError as exc:
        raise ExplainError(f"{path}: {exc.strerror or exc}; pass the engine's DATA_DIR/signing-keys.json") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ExplainError(f"{path}: not a signing key ring ({exc}); expected the engine's signing-keys.json") from None


def explain(path: str | Path, command_id: str, ring: KeyRing | None = None, *, rollout: str = "") -> Explanation:
    """Explain command ``command_id`` of the export at ``path`` (see the module docstring);
    with ``command_id`` empty, the latest kill switch of ``rollout``."""
    faults: list[str] = []
    try:
        header, messages, _footer = read_export(path)
    except ExportError as exc:
        if "checksum mismatch" not in str(exc):
            raise ExplainError(str(exc)) from None
        faults.append(f"export: {exc}")
        header, messages, _footer = read_export(path, verify=False)
    found = _find(messages, command_id, rollout)
    if found is None:
        first, last = (messages[0].seq, messages[-1].seq) if messages else (0, 0)
        what = f"command with id {command_id!r}" if command_id else f"kill switch of rollout {rollout!r}"
        raise ExplainError(f"{path}: no {what} among seq {first}..{last}; "
                           f"list the rollout's commands with `rollout events ROLLOUT` or export a wider range")
    index, message, command = found
    rollout = str(getattr(command, "rollout", ""))
    out = Explanation(command.id, message.seq, message.subject, kind_of(command), rollout,
                      str(getattr(command, "reason", "")), faults=faults)
    _check_signature(out, message, header, ring)
    out.policy, in_force = _in_force(messages[:index], rollout)
    _check_order(out, command, in_force)
    _check_copies(out, messages, command)
    if isinstance(command, KillSwitch):
        out.guards = [msgspec.to_builtins(b) for b in command.breaches]
        if command.actor == "rollback" and command.cause_id:
            _recompute(out, messages[:index], command)
        else:
            out.recomputed = f"not applicable: a kill by {command.actor} (an operator's decision, not a judgement)"
    return out


def _find(messages: Sequence[LogMessage], command_id: str, rollout: str) -> tuple[int, LogMessage, AnyEvent] | None:
    """The command ``command_id``, or (no id) the latest kill switch of ``rollout``."""
    latest = None
    for i, message in enumerate(messages):
        if ".ctl." not in message.subject:
            continue
        for event in read_message(message)[0]:
            if command_id and event.id == command_id:
                return i, message, event
            if not command_id and isinstance(event, KillSwitch) and event.rollout == rollout:
                latest = (i, message, event)
    return latest


def _check_signature(out: Explanation, message: LogMessage, header: dict[str, Any], ring: KeyRing | None) -> None:
    source = "--keys"
    if ring is None and header.get("signing_keys"):
        try:
            ring = msgspec.convert(header["signing_keys"], KeyRing)
            source = "the export's header"
        except msgspec.ValidationError:
            ring = None
    if ring is None:
        out.signature = "not checked: no public key ring (pass --keys DATA_DIR/signing-keys.json)"
        out.faults.append(f"seq {message.seq} {out.command_id}: signature not checked, no public key ring")
        return
    out.key_id = (message.headers or {}).get(KEY_HEADER, "")
    refused = ControlVerifier(require_signed=True, ring=ring).check(message.subject, message.data, message.headers)
    if refused is None:
        out.signature = f"verified: Ed25519 key {out.key_id} (ring from {source})"
        return
    out.signature = {"unsigned": "unsigned: the message has no Ro-Sig-Key/Ro-Sig headers",
                     "unknown_key": f"unknown key {out.key_id!r}: not in the ring from {source}",
                     "bad_signature": f"bad signature: key {out.key_id} did not sign these bytes on this subject"}[refused]
    out.faults.append(f"seq {message.seq} {out.command_id}: signature {out.signature}")


def _in_force(before: Sequence[LogMessage], rollout: str) -> tuple[dict[str, Any], ControlState | None]:
    """The latest live (not dry-run) policy set for ``rollout`` before the command, and its
    control state then (the control consumer's own fold)."""
    found: dict[str, Any] = {"name": "default", "version": 0, "seq": 0, "id": "",
                             "set_by": "nobody: the default policy"}
    states: dict[str, ControlState] = {}
    for message in before:
        if ".ctl." not in message.subject:
            continue
        for event in read_message(message)[0]:
            apply_command(states, event)
            if isinstance(event, ConfigChange) and event.rollout == rollout and event.policy is not None \
                    and not event.policy.get("dry_run"):
                found = {"name": str(event.policy.get("name", "default")), "version": event.after.policy_version,
                         "seq": message.seq, "id": event.id, "set_by": event.actor}
    return found, states.get(rollout)


def _check_order(out: Explanation, command: AnyEvent, in_force: ControlState | None) -> None:
    """A command made against an older state than the one in force is stale: a signed
    command re-published later (a replay) verifies, and this is where it shows."""
    before = getattr(command, "before", None)
    if before is None or in_force is None:
        out.order = "first command of the rollout" if before is not None else ""
        return
    if before.config_version < in_force.config_version:
        out.order = (f"stale: made against config_version {before.config_version}, but {in_force.config_version} "
                     "was in force: a replayed or reordered command")
        out.faults.append(f"seq {out.seq} {out.command_id}: {out.order}")
    else:
        out.order = f"in order: config_version {before.config_version} -> {command.after.config_version}"  # type: ignore[attr-defined]


def _check_copies(out: Explanation, messages: Sequence[LogMessage], command: AnyEvent) -> None:
    """Later copies of the same command (same id, so the same signed bytes if unaltered):
    one that arrives when a newer state is in force is a replay, and services would apply it."""
    states: dict[str, ControlState] = {}
    for message in messages:
        if ".ctl." not in message.subject:
            continue
        for event in read_message(message)[0]:
            if event.id == command.id and message.seq > out.seq:
                held = states.get(event.rollout)  # type: ignore[attr-defined]
                if held is not None and event.before.config_version < held.config_version:  # type: ignore[attr-defined]
                    out.faults.append(f"seq {message.seq}: a copy of {out.command_id} re-published when config_version "
                                      f"{held.config_version} was in force: a replay (its signature still verifies)")
            apply_command(states, event)


def _recompute(out: Explanation, before: Sequence[LogMessage], command: KillSwitch) -> None:
    """Re-fold up to the cause; compare the kill it makes and the evidence it reads."""
    fold, seen = RollbackProjection(), SeenIds()
    emitted: KillSwitch | None = None
    cause: tuple[int, AnyEvent] | None = None
    for message in before:
        if not _concerns(message.subject, command.rollout):
            continue
        for event in read_fresh(message, seen)[0]:
            result = fold.apply(event, message.seq)
            if event.id == command.cause_id:
                cause = (message.seq, event)
                emitted = next((c for c in result if isinstance(c, KillSwitch) and c.id == command.id), None)
                break
        if cause is not None:
            break
    if cause is None:
        out.recomputed = "not recomputed"
        out.faults.append(f"cause event {command.cause_id} is not in the export before seq {out.seq}: export the "
                          "log from the rollout's start")
        return
    seq, event = cause
    out.decisive = {"seq": seq, "id": event.id, "kind": kind_of(event), "time_ms": event.time_ms,
                    **_sample_of(event)}
    if emitted is None:
        out.recomputed = "differs: the re-fold makes no kill at the cause event"
        out.faults.append(f"re-judged at seq {seq} ({event.id}): no kill; the logged kill is not reproduced")
    elif emitted != command:
        fields = [f for f in command.__struct_fields__ if getattr(emitted, f) != getattr(command, f)]
        out.recomputed = "differs in " + ", ".join(fields)
        out.faults.append(f"re-judged at seq {seq} ({event.id}): the kill differs in {', '.join(fields)}")
    else:
        out.recomputed = "equal: the re-fold makes this exact kill at the cause event"
    stats = fold._stats.get(command.rollout)  # the live evidence epoch, as at the kill
    by_seq = {m.seq: m for m in before}
    for ev in command.evidence:
        samples = [] if stats is None else window_samples(stats, command.rollout, ev.variant, ev.metric, ev.window)
        out.evidence.append(_evidence_row(out, ev, samples, by_seq))


def _concerns(subject: str, rollout: str) -> bool:
    """Whether the rollback fold's judgement of ``rollout`` reads this message: its own
    events and commands, and the ticks (the event clock is bounded by ticks alone, and
    each rollout's state is its own), so other rollouts' traffic is skipped."""
    if subject == subjects.TICK:
        return True
    try:
        return subjects.parse(subject).rollout == rollout
    except ValueError:
        return False


def _evidence_row(out: Explanation, ev: KillEvidence, samples: list[tuple[int, float]],
                  by_seq: dict[int, LogMessage]) -> dict[str, Any]:
    row: dict[str, Any] = {k: v for k, v in msgspec.to_builtins(ev).items() if k != "marks"}
    at = first_difference(samples, ev)
    row["ok"] = at is None
    if samples:
        values = [v for _s, v in samples]
        row.update(min=min(values), max=max(values), mean=sum(values) / len(values))
    if at is None:
        return row
    where = f"guard {ev.guard} ({ev.variant} {ev.metric}, {ev.window})"
    if at >= len(samples):
        fault = f"{where}: {len(samples)} samples in the re-fold's window, the kill judged {ev.count}"
    elif not ev.marks:
        fault = f"{where}: the samples' digest differs (seq {ev.first_seq}..{ev.last_seq}; no per-sample marks)"
    else:
        seq, value = samples[at]
        nth = sum(1 for s, _v in samples[:at] if s == seq)
        event_id = _event_id(by_seq.get(seq), out.rollout, ev, nth)
        fault = (f"{where}: event seq {seq} id {event_id} has value {value:g}, not the value judged "
                 f"(sample {at + 1} of {ev.count}): the event was altered")
        row["fault_seq"], row["fault_id"] = seq, event_id
    out.faults.append(fault)
    return row


def _event_id(message: LogMessage | None, rollout: str, ev: KillEvidence, nth: int) -> str:
    """The id of the ``nth`` event of ``message`` that carries a sample of ``ev``'s series."""
    if message is None:
        return "?"
    hits = [e.id for e in read_message(message)[0] if getattr(e, "rollout", None) == rollout
            and getattr(e, "variant", None) == ev.variant
            and ((isinstance(e, Metric) and e.name == ev.metric)
                 or (isinstance(e, Outcome) and ev.metric == "quality" and e.quality is not None))]
    return hits[nth] if nth < len(hits) else "?"


def _sample_of(event: AnyEvent) -> dict[str, Any]:
    if isinstance(event, Metric):
        return {"variant": event.variant, "metric": event.name, "value": event.value}
    if isinstance(event, Outcome):
        return {"variant": event.variant, "metric": "quality", "value": event.quality}
    return {}


def render(ex: Explanation) -> str:
    """The explanation as text for people (``--json`` gives :meth:`Explanation.as_dict`)."""
    lines = [f"command {ex.command_id}: {ex.kind} of rollout {ex.rollout} at seq {ex.seq} ({ex.subject})",
             f"  signature: {ex.signature}",
             f"  policy in force: {ex.policy.get('name')} v{ex.policy.get('version')} "
             f"(set at seq {ex.policy.get('seq')} by {ex.policy.get('set_by')})",
             f"  reason: {ex.reason}"] + ([f"  order: {ex.order}"] if ex.order else [])
    for g in ex.guards:
        lines.append(f"  guard {g['guard']} [{g.get('type')}, {g.get('window')}]: observed {g['observed']:g} vs "
                     f"threshold {g['threshold']:g}" + (f", baseline {g['baseline']:g}" if g.get("baseline") is not None
                                                        else "")
                     + f", n={g.get('candidate_n')}/{g.get('baseline_n')}"
                     + (f", p={g['p_value']:.3g}" if g.get("p_value") is not None else ""))
    for e in ex.evidence:
        lines.append(f"  evidence {e['guard']} {e['variant']} {e['metric']}: {e['count']} samples, seq "
                     f"{e['first_seq']}..{e['last_seq']}, digest {e['digest']} "
                     + ("ok" if e["ok"] else "MISMATCH"))
    if ex.decisive:
        lines.append(f"  decisive event: seq {ex.decisive['seq']} {ex.decisive['kind']} {ex.decisive['id']}"
                     + (f" {ex.decisive.get('metric')}={ex.decisive.get('value')}" if "value" in ex.decisive else ""))
    lines.append(f"  recomputed verdict: {ex.recomputed}")
    lines += [f"  FAULT: {f}" for f in ex.faults]
    lines.append("  explained: the command verifies and its judgement reproduces" if ex.ok
                 else f"  NOT explained: {len(ex.faults)} fault(s)")
    return "\n".join(lines)


def dumps(ex: Explanation) -> str:
    return json.dumps(ex.as_dict(), indent=2, sort_keys=True)
