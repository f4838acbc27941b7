"""The operator API: seed 001's guard API as a ``nats.micro`` service on ``ro.api.*``.

Endpoints (JSON request -> JSON reply): ``status``, ``rollback``, ``resume``,
``evaluate``, ``config``, ``health``, and the operator verbs ``abort``, ``retry``,
``promote``, ``pause``, ``unpause`` (``engine/api/verbs.py``). The service is discoverable like any NATS micro
service (``$SRV.PING|INFO|STATS.rollout-api``) and runs in a queue group, so several
instances share the load.

The API changes nothing directly: every change is published as a control command
(KillSwitch, Resume, ConfigChange) on the log, carrying the operator (``actor``), the
reason, the time and the state before and after. That is the audit trail, and the
same command is what services and consumers obey. Changes are guarded three ways:

* validation first (unknown rollout, percentage out of range, malformed policy, no
  operator identity): a clear error and nothing published;
* optimistic concurrency: the command is published with
  ``Nats-Expected-Last-Subject-Sequence`` over ``ro.ctl.<rollout>.*``, so two operators
  racing cannot both compute ``before`` from the same state; the loser re-reads and
  retries;
* idempotence: the command id derives from the client's ``request_id``, so a retried
  request is stored once (JetStream ``Nats-Msg-Id``, the engine's keyed id of it, which
  no producer can compute and burn first: ``engine/stack/msg_ids.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from nats.micro import add_service
from nats.micro.request import Request

from rollout_engine.engine.api.control_log import ControlView, known_rollouts, read_control
from rollout_engine.engine.api.propagation import status_section
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.events import ConfigChange, ControlState, KillSwitch, Resume, encode, subjects
from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import command_id, is_token, new_event_id

__all__ = ["ENDPOINTS", "SERVICE_NAME", "ApiError", "ControlApi", "call", "serve_api"]

log = logging.getLogger(__name__)

SERVICE_NAME = "rollout-api"
SERVICE_VERSION = "0.1.0"
ENDPOINTS = ("status", "rollback", "resume", "evaluate", "config", "health",
             "abort", "retry", "promote", "pause", "unpause")
"""``rollback`` is the older name of ``abort`` (no ``action`` recorded); the verbs from
``abort`` on live in ``engine/api/verbs.py``."""
RESUME_DEFAULT_PCT = 5.0
"""The runbook's re-enable percentage after a kill (seed 001: "re-enable at 5%")."""
MAX_REASON = 1000
"""Reasons are event Text (at most 1024 characters); room is left for the "manual: " prefix."""
MAX_BODY_BYTES = 1024 * 1024
"""Largest request body (a policy document is a few KB): bigger ones get a 413."""
MAX_DEPTH = 32
"""Deepest nesting of objects and arrays in a request (a policy needs 4): deeper ones get a 400."""
_WRONG_LAST_SEQUENCE = 10071
_RETRIES = 5


class ApiError(Exception):
    """A refused request: HTTP-like ``code`` (400 bad input, 404 unknown rollout, 409
    conflict with the current state, 413 too large, 503 not available) and a message
    saying what was wrong and what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_json = msgspec.json.Encoder()


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


# --- request validation -----------------------------------------------------------------
def _body(request_data: bytes) -> dict[str, Any]:
    """The request as a JSON object, or a 4xx saying why not (whatever its size or depth)."""
    if len(request_data) > MAX_BODY_BYTES:
        raise ApiError(413, f"request is {len(request_data)} bytes; at most {MAX_BODY_BYTES} are accepted")
    if not request_data.strip():
        return {}
    try:
        body = msgspec.json.decode(request_data)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise ApiError(400, f"request nests objects or arrays deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request must be a JSON object, e.g. {\"rollout\": \"checkout-v2\"}")
    _check_depth(body)
    return body


def _check_depth(body: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request nests objects or arrays deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values() if isinstance(item, dict | list))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))


def _rollout(body: dict[str, Any]) -> str:
    rollout = body.get("rollout")
    if not is_token(rollout) or str(rollout).startswith("_"):
        raise ApiError(400, f"rollout: expected 1-64 of A-Z a-z 0-9 _ - (not starting with '_'), got {rollout!r}")
    return str(rollout)


def _actor(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    if actor in (None, ""):
        raise ApiError(400, "actor: a change needs an operator identity (who is making it); "
                            "pass --actor or set ROLLOUT_ACTOR")
    if not is_token(actor):
        raise ApiError(400, f"actor: expected 1-64 of A-Z a-z 0-9 _ -, got {actor!r}")
    return str(actor)


def _reason(body: dict[str, Any], required: bool) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise ApiError(400, f"reason: expected text, got {type(reason).__name__}")
    if required and not reason.strip():
        raise ApiError(400, "reason: say why (it is recorded in the audit trail)")
    if len(reason) > MAX_REASON or any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in reason):
        raise ApiError(400, f"reason: at most {MAX_REASON} characters, no control characters")
    return reason


def _pct(value: Any, field: str = "canary_pct") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{field}: expected a number 0-100, got {value!r}")
    pct = float(value)
    if not 0.0 <= pct <= 100.0:
        raise ApiError(400, f"{field}: {value} is out of range; expected 0-100 (percent of traffic)")
    return pct


def _request_id(body: dict[str, Any]) -> str:
    rid = body.get("request_id")
    if rid is None:
        return new_event_id()
    if not is_token(rid):
        raise ApiError(400, f"request_id: expected 1-64 of A-Z a-z 0-9 _ -, got {rid!r}")
    return str(rid)


def _policy(body: dict[str, Any], version: int) -> dict[str, Any] | None:
    policy = body.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ApiError(400, "policy: expected a policy document (the TOML tables as a JSON object)")
    try:
        from rollout_engine.consumers.rollback.policy import load_policy, policy_document
    except ImportError:  # pragma: no cover - the rollback consumer ships with the engine
        return policy
    try:
        loaded = load_policy(policy, version=version)
    except EventError as exc:
        raise ApiError(400, f"policy: {exc}") from None
    # a preset is expanded here, so the log records every number, not a name whose
    # meaning a later release could change
    return policy_document(loaded) if "preset" in policy else policy


class ControlApi:
    """The endpoint handlers, over one NATS connection (testable without the service)."""

    def __init__(self, nc: Client, js: JetStreamContext | None = None, *, evaluator: Any = None,
                 msg_ids: EngineIds | None = None) -> None:
        """``msg_ids``: the deployment's key (``EngineIds.load(settings)``); without it a key of
        this process only, so a request retried against another instance is not de-duplicated."""
        self.nc = nc
        self.js = js or nc.jetstream()
        self.msg_ids = msg_ids or EngineIds.ephemeral()
        self.started_ms = int(time.time() * 1000)
        self.evaluator = evaluator

    # --- reads ------------------------------------------------------------------------
    async def _require_known(self, rollout: str, create: bool = False) -> None:
        if create:
            return
        if not await known_rollouts(self.js, rollout):
            raise ApiError(404, f"unknown rollout {rollout!r}: nothing in the log; check the name "
                                "(`rollout status` lists rollouts), or start a new rollout with "
                                f"`rollout set {rollout} --canary-pct N --create` (API: config with \"create\": true)")

    async def health(self, body: dict[str, Any]) -> dict[str, Any]:
        info = await self.js.stream_info(subjects.LOG_STREAM)
        return {
            "ok": True,
            "service": SERVICE_NAME,
            "version": SERVICE_VERSION,
            "nats": self.nc.connected_url.geturl() if self.nc.connected_url else "",
            "log": {"messages": info.state.messages, "last_seq": info.state.last_seq},
            "uptime_s": round((time.time() * 1000 - self.started_ms) / 1000, 3),
        }

    async def status(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("rollout") is None:
            rollouts = {n: c for n, c in (await known_rollouts(self.js)).items() if not n.startswith("_")}
            gate = asyncio.Semaphore(32)  # many rollouts: look-ups in parallel, not all at once

            async def one(name: str) -> ControlView:
                async with gate:
                    return await read_control(self.js, name)

            views = await asyncio.gather(*(one(name) for name in rollouts))
            return {"rollouts": [{"rollout": v.rollout, "control": _builtins(v.state), "counts": rollouts[v.rollout]}
                                 for v in views]}
        rollout = _rollout(body)
        counts = (await known_rollouts(self.js, rollout)).get(rollout)
        if not counts:
            raise ApiError(404, f"unknown rollout {rollout!r}: nothing in the log; `rollout status` lists rollouts")
        view = await read_control(self.js, rollout)
        from rollout_engine.consumers.rollback.policy import policy_document
        from rollout_engine.engine.api.verbs import policy_in_force, progression_view

        policy = await policy_in_force(self, rollout)
        return {
            "rollout": rollout,
            "control": _builtins(view.state),
            "last_command": _command_summary(view),
            "counts": counts,
            "stats": await self._kv_json(f"stats.{rollout}"),
            "evaluation": await self._kv_json(f"rollback.{rollout}"),
            "thresholds": policy_document(policy),
            "progression": progression_view(policy, view.state),
            "propagation": await status_section(self.js, view),  # who applied the revision (engine/api/propagation.py)
        }

    async def _kv_json(self, key: str) -> Any:
        """A projection's published snapshot, when a consumer keeps one in KV."""
        try:
            kv = await self.js.key_value(subjects.STATE_BUCKET)
            entry = await kv.get(key)
        except Exception:
            return None
        raw = entry.value or b""
        for decode in (msgspec.json.decode, msgspec.msgpack.decode):
            try:
                return _builtins(decode(raw))
            except Exception:
                continue
        return None

    # --- changes ----------------------------------------------------------------------
    async def _change(
        self,
        rollout: str,
        request_id: str,
        make: Callable[[ControlView, str], Any],
    ) -> dict[str, Any]:
        """Read the state, build the command, publish it guarded by the last control seq."""
        for _attempt in range(_RETRIES):
            view = await read_control(self.js, rollout)
            event = make(view, command_id("api", rollout, request_id))
            if event is None:
                return {"rollout": rollout, "changed": False, "control": _builtins(view.state)}
            headers = self.msg_ids.headers(
                event.id,
                **{"Nats-Expected-Last-Subject-Sequence": str(view.control_seq),
                   "Nats-Expected-Last-Subject-Sequence-Subject": subjects.log_filter(rollout, "ctl")},
            )
            kind = type(event).__struct_config__.tag
            try:
                ack = await self.js.publish(subjects.control(rollout, kind), encode(event), headers=headers, timeout=5)
            except BadRequestError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    await asyncio.sleep(0.01)
                    continue
                raise
            log.info("%s %s by %s: %s", kind, rollout, event.actor, event.reason)
            return {
                "rollout": rollout,
                "changed": True,
                "command": {"kind": kind, "id": event.id, "seq": ack.seq, "duplicate": bool(ack.duplicate)},
                "before": _builtins(event.before),
                "after": _builtins(event.after),
                "control": _builtins(event.after),
            }
        raise ApiError(409, f"rollout {rollout!r} kept changing under this request; try again")

    async def rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout, actor = _rollout(body), _actor(body)
        reason, rid = _reason(body, required=True), _request_id(body)
        await self._require_known(rollout)

        def make(view: ControlView, eid: str) -> KillSwitch | None:
            if view.state.kill_switch:
                return None
            after = msgspec.structs.replace(view.state, canary_pct=0.0, kill_switch=True,
                                            config_version=view.state.config_version + 1)
            return KillSwitch(id=eid, rollout=rollout, time_ms=_now(), producer="api", actor=actor,
                              reason=f"manual: {reason}", before=view.state, after=after)

        return await self._change(rollout, rid, make)

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout, actor = _rollout(body), _actor(body)
        reason, rid = _reason(body, required=False), _request_id(body)
        pct = _pct(body.get("canary_pct", RESUME_DEFAULT_PCT))
        await self._require_known(rollout)
        view = await read_control(self.js, rollout)
        if not view.state.kill_switch:
            raise ApiError(409, f"rollout {rollout!r} is not killed (canary at {view.state.canary_pct:g}%); "
                                "use `rollout set` to change the percentage")

        def make(view: ControlView, eid: str) -> Resume | None:
            if not view.state.kill_switch:
                return None
            after = msgspec.structs.replace(view.state, canary_pct=pct, kill_switch=False,
                                            config_version=view.state.config_version + 1)
            return Resume(id=eid, rollout=rollout, time_ms=_now(), producer="api", actor=actor,
                          reason=reason or f"re-enable at {pct:g}%", before=view.state, after=after,
                          action="resume")

        return await self._change(rollout, rid, make)

    async def config(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout, actor = _rollout(body), _actor(body)
        reason, rid = _reason(body, required=False), _request_id(body)
        unknown = set(body) - {"rollout", "actor", "reason", "request_id", "canary_pct", "kill_switch",
                               "policy", "create"}
        if unknown:
            raise ApiError(400, f"unknown field(s) {sorted(unknown)}; config takes canary_pct, kill_switch, policy")
        pct = _pct(body["canary_pct"]) if "canary_pct" in body else None
        kill = body.get("kill_switch")
        if kill is not None and not isinstance(kill, bool):
            raise ApiError(400, f"kill_switch: expected true or false, got {kill!r}")
        if pct is None and kill is None and body.get("policy") is None:
            raise ApiError(400, "nothing to change: give canary_pct, kill_switch or policy")
        await self._require_known(rollout, create=bool(body.get("create")))
        if kill is True:
            return await self.rollback({**body, "reason": reason or "kill switch set by config"})
        view0 = await read_control(self.js, rollout)
        if kill is False and view0.state.kill_switch:
            return await self.resume({**body, "canary_pct": pct if pct is not None else RESUME_DEFAULT_PCT})
        if pct is not None and pct > 0 and view0.state.kill_switch:
            raise ApiError(409, f"rollout {rollout!r} is killed; lift the kill switch with `rollout resume` first")
        policy = _policy(body, view0.state.policy_version + 1)

        def make(view: ControlView, eid: str) -> ConfigChange | None:
            state = view.state
            after = msgspec.structs.replace(
                state,
                canary_pct=state.canary_pct if pct is None else pct,
                policy_version=state.policy_version + (1 if policy is not None else 0),
            )
            if after == state and policy is None:
                return None
            after = msgspec.structs.replace(after, config_version=state.config_version + 1)
            return ConfigChange(id=eid, rollout=rollout, time_ms=_now(), producer="api", actor=actor,
                                reason=reason or _describe_change(state, after, policy),
                                before=state, after=after, policy=policy, action="set")

        return await self._change(rollout, rid, make)

    async def evaluate(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout = _rollout(body)
        await self._require_known(rollout)
        if self.evaluator is None:
            from functools import partial

            from rollout_engine.engine.logtools.backtest import evaluate_rollout

            self.evaluator = partial(evaluate_rollout, msg_ids=self.msg_ids)
        reply = await self.evaluator(self.js, rollout, body)
        from rollout_engine.engine.stack.metrics import EVALUATIONS

        EVALUATIONS.labels("fail" if reply.get("would_kill") else "pass").inc()
        return reply


def _now() -> int:
    return time.time_ns() // 1_000_000


def _describe_change(before: ControlState, after: ControlState, policy: dict[str, Any] | None) -> str:
    parts = []
    if before.canary_pct != after.canary_pct:
        parts.append(f"canary {before.canary_pct:g}% -> {after.canary_pct:g}%")
    if policy is not None:
        parts.append(f"policy v{after.policy_version}")
    return ", ".join(parts) or "config"


def _command_summary(view: ControlView) -> dict[str, Any] | None:
    cmd = view.command
    if cmd is None:
        return None
    out = {
        "kind": type(cmd).__struct_config__.tag,
        "id": cmd.id,
        "seq": view.command_seq,
        "time_ms": cmd.time_ms,
        "actor": getattr(cmd, "actor", ""),
        "reason": getattr(cmd, "reason", ""),
        "before": _builtins(getattr(cmd, "before", None)),
    }
    breaches = getattr(cmd, "breaches", None)
    if breaches:
        out["breaches"] = _builtins(breaches)
    return out


# --- the service ------------------------------------------------------------------------
def _endpoint(func: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Callable[[Request], Awaitable[None]]:
    async def handle(request: Request) -> None:
        try:
            reply = await func(_body(request.data))
        except ApiError as exc:
            await request.respond_error(str(exc.code), exc.message, data=_json.encode({"error": exc.message, "code": exc.code}))
            return
        except EventError as exc:
            await request.respond_error("400", str(exc), data=_json.encode({"error": str(exc), "code": 400}))
            return
        except RecursionError:  # input that nests too deep for some step: the client's to fix
            message = f"request nests too deep to process; keep objects and arrays within {MAX_DEPTH} levels"
            await request.respond_error("400", message, data=_json.encode({"error": message, "code": 400}))
            return
        except Exception as exc:
            log.exception("api %s failed", getattr(func, "__name__", "?"))
            message = f"internal error: {type(exc).__name__}: {exc}"
            await request.respond_error("500", message, data=_json.encode({"error": message, "code": 500}))
            return
        await request.respond(_json.encode(reply))

    return handle


async def serve_api(nc: Client, stop: asyncio.Event, ready: asyncio.Event | None = None,
                    msg_ids: EngineIds | None = None) -> None:
    """Run the micro service on ``nc`` until ``stop`` is set (``msg_ids``: see :class:`ControlApi`)."""
    api = ControlApi(nc, msg_ids=msg_ids)
    service = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION, queue_group=SERVICE_NAME,
                                description="rollout-engine operator API: status, abort, retry, promote, pause, unpause, "
                                            "resume, config, evaluate, health")
    from rollout_engine.engine.api.verbs import VERB_ENDPOINTS, handler_for

    for name in ENDPOINTS:
        func = handler_for(api, name) if name in VERB_ENDPOINTS else getattr(api, name)
        await service.add_endpoint(name=name, subject=subjects.api(name), handler=_endpoint(func))
    if ready is not None:
        await nc.flush()  # the server has the subscriptions: "ready" means a request is answered
        ready.set()
    try:
        await stop.wait()
    finally:
        await service.stop()


# --- the client -------------------------------------------------------------------------
async def call(nc: Client, endpoint: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Request one endpoint; raise :class:`ApiError` with the service's message on refusal."""
    if endpoint not in ENDPOINTS:
        raise ApiError(400, f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    try:
        msg = await nc.request(subjects.api(endpoint), _json.encode(payload or {}), timeout=timeout)
    except NoRespondersError:
        raise ApiError(503, "no rollout API is running; start it with `rollout up` (or `rollout api`)") from None
    except NatsTimeout:
        raise ApiError(503, f"the rollout API did not answer {endpoint!r} within {timeout:g}s") from None
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise ApiError(int(headers["Nats-Service-Error-Code"]), headers.get("Nats-Service-Error", "error"))
    return msgspec.json.decode(msg.data)
