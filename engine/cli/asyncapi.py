"""The AsyncAPI 3.0 document of every subject, generated from the contract.

``rollout schemas`` writes it beside the JSON Schemas (``docs/asyncapi.json`` next to
``docs/schemas/``): one channel per subject family of :mod:`events.subjects` (producer
events, control commands and engine outputs, ticks, canary-stats snapshots, dead letters,
the KV state bucket and the operator API), one message per event kind of
:mod:`events.schema` whose payload is a ``$ref`` to that kind's JSON Schema file, and
the engine's operations (what it receives, what it sends, what it answers). Nothing here
is written by hand twice: subjects come from the subject map, kinds from the Structs,
API endpoints from the API's client (``engine.api.client.ENDPOINTS``). The official parser (``@asyncapi/parser``) validates it
in ``make test`` with no errors or warnings (tests/integration/test_asyncapi.py).

JSON, not YAML: the engine needs no YAML library, and AsyncAPI accepts both.
"""

from __future__ import annotations

from typing import Any

import msgspec

from rollout_engine.consumers.deadletter import DeadLetter
from rollout_engine.engine.api.client import ENDPOINTS
from rollout_engine.engine.cli.contract_text import canonical_schema, canonical_text
from rollout_engine.events import subjects
from rollout_engine.events.acks import InstanceAck
from rollout_engine.events.codec import MAX_BATCH
from rollout_engine.events.schema import EVENT_TYPES, SCHEMA_VERSION, ControlState, kind_of

__all__ = ["ASYNCAPI_FILE", "render_asyncapi"]

ASYNCAPI_FILE = "asyncapi.json"
MSGPACK = "application/vnd.msgpack"
JSON = "application/json"

_TYPES = {kind_of(t): t for t in EVENT_TYPES}
_PRODUCER_SUMMARY = {
    "decision": "which variant served which unit, and why",
    "outcome": "how a decision turned out (joins its decision by decision_id)",
    "metric": "one measurement of a variant (latency_ms, cost_cents, error...)",
}
_CONTROL_SENDER = {
    "kill_switch": "the rollback consumer (a breach) or the operator API (abort)",
    "resume": "the operator API (resume, retry)",
    "config": "the operator API (set, promote, pause, unpause), or the rollback consumer's staged rollback and progression",
    "escalation": "the rollback consumer (armed, expired), or the operator API (clear_escalation: expired by hand)",
    "recheck": "the verification consumer",
    "would_kill": "the rollback consumer's dry-run policy",
    "guardrail": "the operator API or the bandit consumer (cooldowns)",
    "bandit_config": "the operator (`rollout bandit config`)",
    "recheck_closed": "the verification consumer",
    "notification": "the notifier consumer (one record per webhook delivery attempt)",
}


def _title(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def _description(event_type: type) -> str:
    return canonical_text(event_type.__doc__ or "")


def _event_messages(kind: str, schema_dir: str) -> dict[str, Any]:
    """One event and a batch of them: the two framings a message of this kind may have."""
    ref = {"$ref": f"./{schema_dir}/{kind}.schema.json"}
    name = _title(kind)
    return {
        name: {
            "name": name,
            "title": f"{name} event",
            "summary": _description(_TYPES[kind]).split("\n\n")[0],
            "contentType": MSGPACK,
            "payload": ref,
        },
        f"{name}Batch": {
            "name": f"{name}Batch",
            "title": f"{name} batch",
            "summary": f"Up to {MAX_BATCH} {kind} events of one rollout in one message (a msgpack array).",
            "contentType": MSGPACK,
            "payload": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": ref},
        },
    }


def _struct_schema(struct: type) -> dict[str, Any]:
    """An inline JSON Schema for a Struct that has no file in docs/schemas."""
    (schema,), components = msgspec.json.schema_components([struct], ref_template="#/components/schemas/{name}")
    return {"schema": canonical_schema(schema), "components": canonical_schema(components)}


def _channel(address: str | None, description: str, messages: list[str], parameters: dict[str, Any] | None = None,
             ) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
    }
    if parameters:
        channel["parameters"] = parameters
    return channel


def _operation(action: str, channel: str, summary: str, messages: list[str], tag: str,
               reply: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "description": summary[0].upper() + summary[1:] + ".",
        "tags": [{"name": tag}],
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }
    if reply is not None:
        op["reply"] = reply
    return op


def render_asyncapi(schema_dir: str = "schemas") -> dict[str, Any]:
    """The AsyncAPI 3.0 document; payloads refer to ``./<schema_dir>/<kind>.schema.json``."""
    rollout = {"$ref": "#/components/parameters/rollout"}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}

    for kind in subjects.PRODUCER_KINDS:
        messages.update(_event_messages(kind, schema_dir))
        names = [_title(kind), f"{_title(kind)}Batch"]
        channels[f"evt_{kind}"] = _channel(
            subjects.event("ROLLOUT", kind).replace("ROLLOUT", "{rollout}"),
            f"Producer events: {_PRODUCER_SUMMARY[kind]}. Services publish them (the SDK batches them); "
            f"stream {subjects.LOG_STREAM} stores them in the one ordered log.",
            names, {"rollout": rollout})
        operations[f"receive{_title(kind)}"] = _operation(
            "receive", f"evt_{kind}", f"the engine's consumers fold {kind} events from the log", names, "events")

    for command in subjects.CONTROL_COMMANDS:
        messages.update(_event_messages(command, schema_dir))
        names = [_title(command)]
        channels[f"ctl_{command}"] = _channel(
            subjects.control("ROLLOUT", command).replace("ROLLOUT", "{rollout}"),
            f"Control subject, published by {_CONTROL_SENDER[command]}; stored in {subjects.LOG_STREAM}. "
            "Services follow ro.ctl.> with an ordered consumer, deliver policy last per subject. "
            "A partitioned log stores the subject with a partition number appended (docs/scaling.md).",
            names, {"rollout": rollout})
        operations[f"send{_title(command)}"] = _operation(
            "send", f"ctl_{command}", f"{_CONTROL_SENDER[command]} publishes {command} commands", names, "control")

    messages.update({k: v for k, v in _event_messages("tick", schema_dir).items() if not k.endswith("Batch")})
    channels["tick"] = _channel(subjects.TICK, "Engine time as an event: windows, sustain and cooldowns move on "
                                "ticks, so replays reproduce them.", ["Tick"])
    operations["sendTick"] = _operation("send", "tick", "`rollout up` publishes a tick every tick_interval_ms",
                                        ["Tick"], "engine")

    messages["CanaryStats"] = {
        "name": "CanaryStats", "title": "Canary-stats snapshot", "contentType": JSON,
        "summary": "A rollout's canary statistics per window and variant, for people and dashboards.",
        "payload": {"type": "object", "required": ["rollout", "now_ms", "windows"], "properties": {
            "rollout": {"type": "string", "description": "the rollout id"},
            "now_ms": {"type": "integer", "description": "event time of the fold, ms since the Unix epoch"},
            "windows": {"type": "object", "description": "window name (last_n, time, all) -> variant -> "
                        "decisions, outcomes, quality_mean, metric summaries (docs/consumers.md)"}}},
    }
    channels["stats"] = _channel(subjects.stats("ROLLOUT").replace("ROLLOUT", "{rollout}"),
                                 "Core NATS (not stored): the canary_stats consumer's snapshots, at most one a second.",
                                 ["CanaryStats"], {"rollout": rollout})
    operations["sendStats"] = _operation("send", "stats", "the canary_stats consumer publishes snapshots",
                                         ["CanaryStats"], "engine")
    messages["RollbackEvaluation"] = {
        "name": "RollbackEvaluation", "title": "Rollback evaluation", "contentType": JSON,
        "summary": "The rollback consumer's evaluation of a rollout (also in KV under rollback.<rollout>).",
        "payload": {"type": "object", "required": ["rollout", "verdict"], "properties": {
            "rollout": {"type": "string", "description": "the rollout id"},
            "verdict": {"type": "string", "enum": ["killed", "idle", "unhealthy", "insufficient", "healthy"],
                        "description": "one word for people and `rollout wait --for healthy`"},
            "guards": {"type": "object", "description": "guard name -> state (ok, pending, alarm, recovering)"},
            "policy": {"type": "object", "description": "name and version of the live policy"}}},
    }
    channels["evaluation"] = _channel(subjects.evaluation("ROLLOUT").replace("ROLLOUT", "{rollout}"),
                                      "Core NATS (not stored): the rollback consumer's evaluation, at most one a "
                                      "second; `rollout status --watch` and `rollout wait` follow it.",
                                      ["RollbackEvaluation"], {"rollout": rollout})
    operations["sendEvaluation"] = _operation("send", "evaluation", "the rollback consumer publishes its evaluation",
                                              ["RollbackEvaluation"], "engine")

    letter = _struct_schema(DeadLetter)
    schemas.update(letter["components"])
    messages["DeadLetter"] = {
        "name": "DeadLetter", "title": "Dead letter", "contentType": MSGPACK,
        "summary": "What a consumer could not fold: the original bytes, where they were, and why.",
        "headers": {"type": "object", "properties": {
            "Nats-Msg-Id": {"type": "string", "description": "the engine's keyed id (docs/security.md) of "
                                                             "dlq-<consumer>-<stream seq>-<index>"},
            "Ro-Reason": {"type": "string", "description": "the reason, one line"},
            "Ro-Stream-Seq": {"type": "string", "description": f"stream sequence of the original in {subjects.LOG_STREAM}"}}},
        "payload": letter["schema"],
    }
    channels["dlq"] = _channel(subjects.dlq("CONSUMER").replace("CONSUMER", "{consumer}"),
                               f"Dead letters of one consumer, stored in stream {subjects.DLQ_STREAM}.",
                               ["DeadLetter"], {"consumer": {"$ref": "#/components/parameters/consumer"}})
    operations["sendDeadLetter"] = _operation("send", "dlq", "a consumer dead-letters an item it cannot fold",
                                              ["DeadLetter"], "engine")

    state = _struct_schema(ControlState)
    schemas.update(state["components"])
    messages["ControlStateValue"] = {
        "name": "ControlStateValue", "title": "Control state (KV)", "contentType": MSGPACK,
        "summary": "A rollout's current control state under key control.<rollout>, kept by the control consumer.",
        "payload": state["schema"],
    }
    messages["SnapshotValue"] = {
        "name": "SnapshotValue", "title": "Published snapshot (KV)", "contentType": JSON,
        "summary": "stats.<rollout>, rollback.<rollout> (guard states) or bandit.<rollout> (arm shares): JSON.",
        "payload": {"type": "object"},
    }
    channels["kv_state"] = _channel(
        subjects.kv_subject("{key}"),
        f"The KV bucket {subjects.STATE_BUCKET}: current state for readers of any language (a cache; the log is the truth).",
        ["ControlStateValue", "SnapshotValue"], {"key": {"$ref": "#/components/parameters/key"}})
    operations["sendState"] = _operation("send", "kv_state", "consumers keep current state in the KV bucket",
                                         ["ControlStateValue", "SnapshotValue"], "engine")

    ack = _struct_schema(InstanceAck)
    schemas.update(ack["components"])
    messages["InstanceAck"] = {
        "name": "InstanceAck", "title": "Acknowledgement of an SDK instance (KV)", "contentType": MSGPACK,
        "summary": "The control revision an instance applied per rollout, with the command id, when the log "
                   "stored it and when the instance applied it (docs/sdk.md). Put with a per-message TTL "
                   "(Nats-TTL); a KV-Operation PURGE when the instance closes.",
        "payload": ack["schema"],
    }
    channels["acks"] = _channel(
        f"$KV.{subjects.ACK_BUCKET}.{{service}}.{{instance}}",
        f"The KV bucket {subjects.ACK_BUCKET}: one entry per SDK instance, rewritten at each change it applies "
        "and on a heartbeat (every ack_ttl_s/3). The key is authoritative for the identity.",
        ["InstanceAck"], {"service": {"$ref": "#/components/parameters/service"},
                          "instance": {"$ref": "#/components/parameters/instance"}})
    operations["sendAck"] = _operation("send", "acks", "every RolloutClient reports the control revision it applied",
                                       ["InstanceAck"], "acknowledgements")

    messages["ApiRequest"] = {
        "name": "ApiRequest", "title": "Operator API request", "contentType": JSON,
        "summary": "A JSON object: rollout, actor, reason, request_id, canary_pct, policy...; a status listing "
                   "takes limit, cursor, state, prefix (docs/operations.md).",
        "payload": {"type": "object"},
    }
    messages["ApiReply"] = {
        "name": "ApiReply", "title": "Operator API reply", "contentType": JSON,
        "summary": "A JSON object; a refusal carries the headers Nats-Service-Error-Code and Nats-Service-Error.",
        "headers": {"type": "object", "properties": {
            "Nats-Service-Error-Code": {"type": "string", "description": "400, 404, 409, 413 (a reply over the server's max_payload: "
                                                          "ask for a smaller page), 500 or 503"},
            "Nats-Service-Error": {"type": "string", "description": "what was wrong and what to do"}}},
        "payload": {"type": "object"},
    }
    channels["api"] = _channel(subjects.api("ENDPOINT").replace("ENDPOINT", "{endpoint}"),
                               "The operator API (a nats.micro service, queue group rollout-api).", ["ApiRequest"],
                               {"endpoint": {"$ref": "#/components/parameters/endpoint"}})
    channels["api_reply"] = _channel(None, "The requester's inbox (the NATS reply subject of the request).",
                                     ["ApiReply"])
    operations["answerApi"] = _operation(
        "receive", "api", "the API process answers operator requests", ["ApiRequest"], "operators",
        reply={"channel": {"$ref": "#/channels/api_reply"},
               "messages": [{"$ref": "#/channels/api_reply/messages/ApiReply"}]})

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "rollout-engine",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Every NATS subject of the rollout engine: producer events in, control commands, "
                           "ticks, stats, dead letters and state out, and the operator API. Generated from "
                           "events/subjects.py and events/schema.py by `make schemas`; see docs/events.md.",
            "contact": {"name": "rollout-engine maintainers"},
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"name": "events", "description": "producer events"},
                     {"name": "control", "description": "control commands and engine outputs"},
                     {"name": "engine", "description": "ticks, stats, dead letters, state"},
                     {"name": "operators", "description": "the operator API"},
                     {"name": "acknowledgements", "description": "SDK instances report what they applied"}],
        },
        "defaultContentType": MSGPACK,
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats",
                              "description": "the embedded nats-server of `rollout up` (its URL is in DATA_DIR/nats.url)"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "rollout": {"description": "rollout id: 1-64 of A-Z a-z 0-9 _ - (user rollouts never start with _)"},
                "consumer": {"description": "consumer name (rollback, canary_stats, control, ...)"},
                "endpoint": {"description": "API endpoint", "enum": list(ENDPOINTS)},
                "key": {"description": "control.<rollout>, stats.<rollout>, rollback.<rollout> or bandit.<rollout>"},
                "service": {"description": "the SDK instance's service (its producer id)"},
                "instance": {"description": "the SDK instance id: <host>-<pid>-<random>"},
            },
            "messages": messages,
            "schemas": schemas,
        },
    }


def render_asyncapi_bytes(schema_dir: str = "schemas") -> bytes:
    """The document as formatted JSON, as committed."""
    return msgspec.json.format(msgspec.json.encode(render_asyncapi(schema_dir)), indent=2) + b"\n"
