"""The one subject map. Nothing else formats or parses a NATS subject by hand.

::

    ro.evt.<rollout>.<kind>     producer events: decision | outcome | metric
    ro.ctl.<rollout>.<command>  control commands: kill_switch | resume | config,
                                and engine outputs: escalation | recheck | would_kill |
                                notification
    ro.tick                     engine ticks (time as an event)
    ro.stats.<rollout>          canary-stats snapshots (core NATS, for people/dashboards)
    ro.stats.<rollout>.eval     the rollback consumer's evaluation of the rollout (core NATS)
    ro.dlq.<consumer>           dead letters of one consumer
    ro.api.<endpoint>           the operator API (nats.micro)
    $KV.ro_acks.<service>.<instance>
                                SDK acknowledgements: the control revision each
                                service instance applied (KV bucket ``ro_acks``)

Events, control and ticks are captured by ONE stream (``LOG_STREAM``) so every decider
reads a single total order and a replay is deterministic.

The KV bucket ``ro_state`` holds what consumers mirror for readers of any language, one
key per rollout and kind (:func:`kv_key`)::

    control.<rollout>   the current ControlState (msgpack), by the control consumer
    stats.<rollout>     the canary-stats summary (JSON), by the canary_stats consumer
    bandit.<rollout>    the BanditView choose() reads (msgpack), by the bandit consumer
    rollback.<rollout>  the rollback consumer's evaluation status (JSON)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from rollout_engine.events.ids import check_token, is_token
from rollout_engine.events.schema import Event, kind_of

__all__ = [
    "ACKS_ALL",
    "ACK_BUCKET",
    "ACK_STREAM",
    "ALL",
    "API_ALL",
    "CONTROL_ALL",
    "CONTROL_COMMANDS",
    "DLQ_ALL",
    "DLQ_STREAM",
    "EVENTS_ALL",
    "EVENTS_PUBLISH",
    "KV_ALL",
    "KV_KINDS",
    "KV_STREAM",
    "LOG_STREAM",
    "LOG_SUBJECTS",
    "PARTITION_SOURCE",
    "PRODUCER_KINDS",
    "ROOT",
    "STATE_BUCKET",
    "STATS_ALL",
    "TICK",
    "WIDE_LOG_SUBJECTS",
    "ParsedSubject",
    "ack_filter",
    "ack_key",
    "ack_subject",
    "api",
    "control",
    "control_filter",
    "dlq",
    "engine_key",
    "evaluation",
    "event",
    "events_filter",
    "for_event",
    "kv_filter",
    "kv_key",
    "kv_rollout",
    "kv_subject",
    "log_filter",
    "parse",
    "parse_ack_subject",
    "partition_count",
    "partition_filters",
    "partition_of",
    "partition_transform",
    "partitioned",
    "rollout_filters",
    "stats",
]

ROOT = "ro"
ALL = f"{ROOT}.>"
"""Every subject of the engine (the engine role subscribes to it)."""
EVENTS_ALL = f"{ROOT}.evt.>"
CONTROL_ALL = f"{ROOT}.ctl.>"
TICK = f"{ROOT}.tick"
STATS_ALL = f"{ROOT}.stats.>"
DLQ_ALL = f"{ROOT}.dlq.>"
API_ALL = f"{ROOT}.api.>"

LOG_STREAM = "RO_LOG"
"""The log: producer events, control commands and ticks in one total order."""
EVENTS_PUBLISH = f"{ROOT}.evt.*.*"
"""Every producer event subject, of exactly the documented depth: what producers may publish."""
LOG_SUBJECTS = [EVENTS_PUBLISH, f"{ROOT}.ctl.*.*", TICK]
"""What the log stream captures: exactly the documented depths. A ``>`` would also capture
``ro.evt.r1.metric.x``, which no reader can parse (the server refuses it now: no stream)."""
WIDE_LOG_SUBJECTS = frozenset({EVENTS_ALL, CONTROL_ALL})
"""What logs created before the exact depths captured; provisioning narrows them."""
DLQ_STREAM = "RO_DLQ"
STATE_BUCKET = "ro_state"
"""KV bucket of what consumers mirror for readers of any language (keys: :func:`kv_key`)."""
KV_STREAM = f"KV_{STATE_BUCKET}"
"""The JetStream stream behind the KV bucket (permissions name it)."""
KV_ALL = f"$KV.{STATE_BUCKET}.>"
"""Every KV put of the bucket, as a subject (the engine role publishes them)."""
KV_KINDS: tuple[str, ...] = ("control", "stats", "bandit", "rollback")
"""What the bucket holds per rollout: ``<kind>.<rollout>``."""

ProducerKind = Literal["decision", "outcome", "metric"]
PRODUCER_KINDS: tuple[str, ...] = ("decision", "outcome", "metric")
CONTROL_COMMANDS: tuple[str, ...] = (
    "kill_switch",
    "resume",
    "config",
    "escalation",
    "recheck",
    "would_kill",
    "guardrail",
    "bandit_config",
    "recheck_closed",
    "notification",
)


class ParsedSubject(NamedTuple):
    """What a subject names: its family (evt, ctl, tick...), rollout and kind."""

    family: str
    rollout: str | None
    kind: str | None


def event(rollout: str, kind: str) -> str:
    """``ro.evt.<rollout>.<kind>`` for a producer event."""
    check_token(rollout, "rollout")
    if kind not in PRODUCER_KINDS:
        raise ValueError(f"unknown producer event kind {kind!r}; expected one of {PRODUCER_KINDS}")
    return f"{ROOT}.evt.{rollout}.{kind}"


def control(rollout: str, command: str) -> str:
    """``ro.ctl.<rollout>.<command>`` for a control command or engine output."""
    check_token(rollout, "rollout")
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {CONTROL_COMMANDS}")
    return f"{ROOT}.ctl.{rollout}.{command}"


def for_event(emitted: Event) -> str:
    """Where an event is published: ``ro.ctl.<rollout>.<kind>`` for a command or engine
    output, ``ro.evt.<rollout>.<kind>`` for a producer event, ``ro.tick`` for a tick."""
    kind = kind_of(emitted)
    if kind in CONTROL_COMMANDS:
        return control(emitted.rollout, kind)
    if kind in PRODUCER_KINDS:
        return event(emitted.rollout, kind)
    if kind == "tick":
        return TICK
    raise ValueError(
        f"a {kind!r} event has no subject in events.subjects; add its kind to CONTROL_COMMANDS "
        "(or PRODUCER_KINDS) before emitting it"
    )


def events_filter(rollout: str | None = None) -> str:
    """Filter for every producer event, or those of one rollout."""
    return EVENTS_ALL if rollout is None else f"{ROOT}.evt.{check_token(rollout, 'rollout')}.*"


def control_filter(rollout: str | None = None, command: str | None = None) -> str:
    """Filter for control subjects: every one, one rollout's, or one command of every rollout.

    >>> control_filter(command="kill_switch")
    'ro.ctl.*.kill_switch'
    """
    if command is None:
        return CONTROL_ALL if rollout is None else f"{ROOT}.ctl.{check_token(rollout, 'rollout')}.*"
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown control command {command!r}; expected one of {CONTROL_COMMANDS}")
    token = "*" if rollout is None else check_token(rollout, "rollout")
    return f"{ROOT}.ctl.{token}.{command}"


def partitioned(subject: str) -> str:
    """How a partitioned log stores ``subject``: with one more token, the partition number."""
    return f"{subject}.*"


def log_filter(rollout: str | None, family: str) -> str:
    """Every stored ``evt`` or ``ctl`` subject of one rollout, partitioned log or not.

    ``ro.<family>.<rollout>.>`` matches ``ro.ctl.r1.kill_switch`` and the partitioned
    ``ro.ctl.r1.kill_switch.3`` alike: use it for stream queries (last message, expected
    last subject sequence, rollout reads), not for permissions.
    """
    if family not in ("evt", "ctl"):
        raise ValueError(f"log_filter family is 'evt' or 'ctl', got {family!r}")
    token = "*" if rollout is None else check_token(rollout, "rollout")
    return f"{ROOT}.{family}.{token}.>"


def rollout_filters(rollout: str | None = None) -> list[str]:
    """Every stored subject of one rollout (or of all): its producer events and its control subjects."""
    return [log_filter(rollout, "evt"), log_filter(rollout, "ctl")]


def stats(rollout: str) -> str:
    """``ro.stats.<rollout>``: canary-stats snapshots."""
    return f"{ROOT}.stats.{check_token(rollout, 'rollout')}"


def evaluation(rollout: str) -> str:
    """``ro.stats.<rollout>.eval``: the rollback consumer's evaluation (guard states, verdict).

    Pushed beside the canary stats so ``rollout wait --for healthy`` and ``status --watch``
    need no polling, and readable with the same ``ro.stats.>`` permission.
    """
    return f"{ROOT}.stats.{check_token(rollout, 'rollout')}.eval"


def dlq(consumer: str) -> str:
    """``ro.dlq.<consumer>``: dead letters of one consumer."""
    return f"{ROOT}.dlq.{check_token(consumer, 'consumer')}"


def api(endpoint: str) -> str:
    """``ro.api.<endpoint>``: one operator API endpoint."""
    return f"{ROOT}.api.{check_token(endpoint, 'endpoint')}"


ENGINE_KEY_PREFIX = "engine."
"""KV keys of the engine's own health in ``STATE_BUCKET`` (no rollout is named ``engine``'s way:
rollout keys are ``<kind>.<rollout>`` with kinds control, stats, bandit, rollback)."""


def engine_key(*parts: str) -> str:
    """``engine.<part>...``: the KV key of one piece of engine health.

    ``engine.supervisor`` (children of ``rollout up``, their restarts and crash loops),
    ``engine.relay.<consumer>`` (engine messages whose id another publisher took first).
    """
    return ENGINE_KEY_PREFIX + ".".join(check_token(part, "key part") for part in parts)


def kv_key(kind: str, rollout: str) -> str:
    """Key of KV ``ro_state`` where a consumer mirrors one rollout: ``<kind>.<rollout>``.

    >>> kv_key("bandit", "checkout")
    'bandit.checkout'
    """
    if kind not in KV_KINDS:
        raise ValueError(f"unknown KV kind {kind!r}; expected one of {KV_KINDS}")
    return f"{kind}.{check_token(rollout, 'rollout')}"


def kv_filter(kind: str, rollout: str | None = None) -> str:
    """KV key filter (for a watch): one rollout's key, or ``<kind>.*`` for every rollout."""
    if rollout is not None:
        return kv_key(kind, rollout)
    if kind not in KV_KINDS:
        raise ValueError(f"unknown KV kind {kind!r}; expected one of {KV_KINDS}")
    return f"{kind}.*"


def kv_subject(key: str) -> str:
    """The subject a KV key's values travel on (``$KV.ro_state.<key>``): watch filters, permissions."""
    return f"$KV.{STATE_BUCKET}.{key}"


def kv_rollout(kind: str, key: str) -> str | None:
    """The rollout of a ``<kind>.<rollout>`` key, or None for a key of another kind."""
    prefix = f"{kind}."
    return key[len(prefix):] if key.startswith(prefix) and len(key) > len(prefix) else None


def parse(subject: str) -> ParsedSubject:
    """Split a subject of this map into its parts; raise ValueError for a foreign one.

    A subject stored by a partitioned log carries a trailing partition number
    (``ro.evt.<rollout>.<kind>.<partition>``, see :func:`partition_transform`); it
    parses to the same parts as the subject the producer published.
    """
    parts = subject.split(".")
    if len(parts) == 5 and parts[1] in ("evt", "ctl") and parts[4].isdigit():
        parts = parts[:4]
    if len(parts) >= 2 and parts[0] == ROOT:
        family = parts[1]
        if family in ("evt", "ctl") and len(parts) == 4:
            return ParsedSubject(family, parts[2], parts[3])
        if family in ("stats", "dlq") and len(parts) == 3:
            return ParsedSubject(family, parts[2], None)
        if family == "stats" and len(parts) == 4 and parts[3] == "eval":
            return ParsedSubject(family, parts[2], "eval")
        if family == "tick" and len(parts) == 2:
            return ParsedSubject(family, None, None)
    raise ValueError(f"{subject!r} is not a rollout-engine subject (see events.subjects)")


# --- partitions (docs/scaling.md) ------------------------------------------------------
# A partitioned log stores ``ro.evt.<rollout>.<kind>`` as ``ro.evt.<rollout>.<kind>.<p>``
# and ``ro.ctl.<rollout>.<command>`` as ``ro.ctl.<rollout>.<command>.<p>``, where ``p``
# is the server's deterministic ``partition(n, rollout)``: the stream's own subject
# transform adds it, so producers, permissions and every subject builder above stay
# unchanged. ``ro.tick`` keeps no partition: every partition's consumer reads it.
PARTITION_SOURCE = f"{ROOT}.*.*.*"
"""What the stream's subject transform matches: evt and ctl subjects (4 tokens), not the tick."""


def partition_transform(count: int) -> tuple[str, str]:
    """(source, destination) of the log stream's subject transform for ``count`` partitions.

    The partition number is NATS's ``{{partition(count, 2)}}`` of the rollout token,
    appended as a last token so ``ro.evt.>`` and ``ro.ctl.>`` still match everything.
    """
    if count < 1:
        raise ValueError(f"a partitioned log needs at least 1 partition, got {count}")
    return PARTITION_SOURCE, f"{ROOT}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{partition({count},2)}}}}"


def partition_count(transform_dest: str | None) -> int:
    """The partition count a stream's transform destination encodes; 0 when unpartitioned."""
    if not transform_dest or "{{partition(" not in transform_dest:
        return 0
    inner = transform_dest.split("{{partition(", 1)[1]
    return int(inner.split(",", 1)[0])


def partition_filters(partition: int) -> list[str]:
    """Consumer filter subjects of one partition: its rollouts' events and control, and every tick."""
    if partition < 0:
        raise ValueError(f"a partition number is >= 0, got {partition}")
    return [f"{ROOT}.evt.*.*.{partition}", f"{ROOT}.ctl.*.*.{partition}", TICK]


def partition_of(rollout: str, count: int) -> int:
    """The partition of ``rollout`` among ``count``: the same function as the server's mapping.

    nats-server's ``partition(n, ...)`` is FNV-1a (32 bit) of the token, modulo ``n``;
    this lets tools say which process owns a rollout without asking the server.
    """
    if count < 1:
        raise ValueError(f"a partitioned log needs at least 1 partition, got {count}")
    h = 0x811C9DC5
    for byte in check_token(rollout, "rollout").encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % count


# --- acknowledgements (docs/sdk.md, "Acknowledgements") ---------------------------------
# Not part of the log: each SDK instance keeps one KV entry, rewritten at each change it
# applies and on a heartbeat, expiring by per-message TTL when the instance stops.
ACK_BUCKET = "ro_acks"
"""KV bucket: key ``<service>.<instance>`` -> the instance's InstanceAck (msgpack)."""
ACK_STREAM = f"KV_{ACK_BUCKET}"
"""The JetStream stream behind the bucket (permissions and readers name it)."""
ACKS_ALL = f"$KV.{ACK_BUCKET}.>"
"""Every acknowledgement subject: what a reader of the bucket filters on."""


def ack_key(service: str, instance: str) -> str:
    """KV key of one instance: ``<service>.<instance>``.

    The service is a token of its own so a per-service credential can be allowed
    ``$KV.ro_acks.<service>.*`` and nothing else (docs/security.md).

    >>> ack_key("checkout", "pod-7-1a2b")
    'checkout.pod-7-1a2b'
    """
    return f"{check_token(service, 'service')}.{check_token(instance, 'instance')}"


def ack_subject(service: str, instance: str) -> str:
    """``$KV.ro_acks.<service>.<instance>``: where an instance publishes its acknowledgement."""
    return f"$KV.{ACK_BUCKET}.{ack_key(service, instance)}"


def ack_filter(service: str | None = None) -> str:
    """What may publish acknowledgements: ``$KV.ro_acks.*.*``, or one service's instances
    ``$KV.ro_acks.<service>.*`` (a per-service credential, docs/security.md)."""
    token = "*" if service is None else check_token(service, "service")
    return f"$KV.{ACK_BUCKET}.{token}.*"


def parse_ack_subject(subject: str) -> tuple[str, str]:
    """(service, instance) of an acknowledgement subject; ValueError for anything else."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == "$KV" and parts[1] == ACK_BUCKET and is_token(parts[2]) and is_token(parts[3]):
        return parts[2], parts[3]
    raise ValueError(f"{subject!r} is not an acknowledgement subject ($KV.{ACK_BUCKET}.<service>.<instance>)")
