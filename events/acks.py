"""Acknowledgements: which control revision each service instance has applied.

Every SDK instance (``RolloutClient``) keeps one entry in the KV bucket ``ro_acks``
under ``<service>.<instance>`` (``events.subjects.ack_key``). The value is one
:class:`InstanceAck`: who the instance is, how long its report stays fresh, and for each
rollout it holds, the control revision it applied and when.

The *control revision* of a rollout is the log sequence of the command that set its
state (``RolloutClient.control_seq``). Revisions only grow, so "instance X has applied
the kill at sequence 812" is ``rollouts[r].revision >= 812``.

This is not an event of the log: it is a report about the log's effect, rewritten in
place, and nothing the engine decides depends on it. A reader trusts the subject for the
identity (service and instance come from the key, see :func:`decode_ack`) and treats
the rest as the claim of whoever held a credential allowed to publish there
(docs/security.md).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from rollout_engine.events.errors import EventError
from rollout_engine.events.schema import Count, Token

__all__ = ["MAX_ACK_BYTES", "MAX_ROLLOUTS", "AppliedRevision", "InstanceAck", "decode_ack", "encode_ack"]

MAX_ROLLOUTS = 10_000
"""Rollouts one report may list; a bigger report is refused rather than trusted."""
MAX_ACK_BYTES = 1024 * 1024
"""Largest report a reader decodes."""

Micros = Annotated[int, Meta(ge=0, le=2**62, description="microseconds since the Unix epoch (0: unknown)")]
Short = Annotated[str, Meta(max_length=256, description="free text, at most 256 characters")]


class AppliedRevision(Struct, array_like=True, frozen=True, gc=False):
    """The control revision an instance applied for one rollout.

    ``published_us`` is when the log stored the command (the server's clock, read from
    the message's JetStream metadata), ``applied_us`` when the instance applied it (its
    own clock): their difference is the propagation latency. Both are 0 for a state the
    instance read while catching up at start-up, where no propagation was measured.
    Array-like on the wire: fields are only ever appended.
    """

    revision: Count
    command_id: Annotated[str, Meta(max_length=64)] = ""
    published_us: Micros = 0
    applied_us: Micros = 0

    @property
    def latency_us(self) -> int | None:
        """Command stored -> applied by this instance; None when not measured."""
        if not self.published_us or not self.applied_us:
            return None
        return max(0, self.applied_us - self.published_us)


class InstanceAck(Struct, kw_only=True, frozen=True, tag="instance_ack", tag_field="kind"):
    """One service instance's report: identity, freshness, and revisions per rollout.

    ``ttl_ms``: a reader counts the instance as live while its latest report is at most
    this old (by the server's store time), as stale after; the server forgets the entry
    later still (per-message TTL, ten times ``ttl_ms``). ``rollouts`` lists every rollout
    whose control state the instance holds: the SDK follows all control subjects, so an
    instance follows every rollout that has a command in the log.
    """

    service: Token
    instance: Token
    host: Short = ""
    pid: Count = 0
    sdk_version: Annotated[str, Meta(max_length=64)] = ""
    started_ms: Count = 0
    reported_ms: Count = 0
    ttl_ms: Annotated[int, Meta(ge=1, le=86_400_000)] = 30_000
    rollouts: Annotated[dict[Token, AppliedRevision], Meta(max_length=MAX_ROLLOUTS)] = {}


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(InstanceAck)


def encode_ack(ack: InstanceAck) -> bytes:
    """The msgpack bytes an instance publishes."""
    return _encoder.encode(ack)


def decode_ack(data: bytes, service: str, instance: str) -> InstanceAck:
    """Decode a report found under ``<service>.<instance>``; raise EventError if it is bad.

    The key is what the server vouches for (a per-service credential is restricted to
    its own service's keys), so a body naming another service or instance is refused.
    """
    if len(data) > MAX_ACK_BYTES:
        raise EventError("$", f"acknowledgement of {len(data)} bytes exceeds {MAX_ACK_BYTES}")
    try:
        ack = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EventError.from_msgspec(exc, "not an InstanceAck (events/acks.py)") from None
    if ack.service != service or ack.instance != instance:
        raise EventError("$.service", f"the report names {ack.service}.{ack.instance} but sits under "
                                      f"{service}.{instance}; the key is authoritative")
    return ack
