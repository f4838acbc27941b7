"""The operator API: the guard API as a ``nats.micro`` service on ``ro.api.*``.

Endpoints (JSON request -> JSON reply, ``engine.api.client.ENDPOINTS``): ``status``,
``resume``, ``evaluate``, ``config``, ``health``, the operator verbs ``abort``, ``retry``,
``promote``, ``pause``, ``unpause`` (``engine/api/verbs.py``), and ``rollback``, the older
name of ``abort``, kept for existing clients. The service is discoverable like any NATS
micro service (``$SRV.PING|INFO|STATS.rollout-api``) and runs in a queue group, so
several instances share the load.

The API changes nothing directly: every change is published as a control command
(KillSwitch, Resume, ConfigChange, built by ``events.transitions``: one rule for the
after-state and ``config_version`` whoever changes it) on the log, carrying the operator
(``actor``), the reason, the time and the state before and after. That is the audit
trail, and the same command is what services and consumers obey. Every change goes
through ONE guarded publish (:meth:`ControlApi._change`), guarded three ways:

* validation first (``engine.api.requests``: unknown rollout, percentage out of range,
  malformed policy, no operator identity): a clear error and nothing published;
* optimistic concurrency: the command is published with
  ``Nats-Expected-Last-Subject-Sequence`` over ``ro.ctl.<rollout>.*``, so two operators
  racing cannot both compute ``before`` from the same state; the loser re-reads and
  retries;
* idempotence: the command id derives from the client's ``request_id`` (or, for the
  kill ``evaluate`` finds missing, from its cause, as the rollback consumer's), so a
  retried request is stored once (JetStream ``Nats-Msg-Id``, the engine's keyed id of
  it, which no producer can compute and burn first: ``engine/stack/msg_ids.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError
from nats.micro import add_service

from rollout_engine.consumers.rollback.policy import policy_document
from rollout_engine.engine.api.client import ENDPOINTS
from rollout_engine.engine.api.control_log import ControlView, known_rollouts, read_control
from rollout_engine.engine.api.propagation import status_section
from rollout_engine.engine.api.replies import endpoint
from rollout_engine.engine.api.requests import (
    ApiError,
    actor_of,
    now_ms,
    page_of,
    pct_of,
    policy_of,
    reason_of,
    request_id_of,
    rollout_of,
)
from rollout_engine.engine.api.rollout_index import DEFAULT_LIMIT, MAX_LIMIT, LiveIndex
from rollout_engine.engine.api.verbs import (
    VERB_ENDPOINTS,
    handler_for,
    policy_in_force,
    progression_view,
)
from rollout_engine.engine.logtools.backtest import evaluate_rollout
from rollout_engine.engine.stack.metrics import EVALUATIONS
from rollout_engine.engine.stack.msg_ids import EngineIds
from rollout_engine.engine.stack.signing import CommandSigner
from rollout_engine.events import ControlState, KillSwitch, encode, kind_of, subjects, transitions
from rollout_engine.events.ids import command_id
from rollout_engine.events.schema import OperatorAction

__all__ = ["SERVICE_NAME", "ControlApi", "serve_api"]

log = logging.getLogger(__name__)

SERVICE_NAME = "rollout-api"
SERVICE_VERSION = "0.1.0"
RESUME_DEFAULT_PCT = 5.0
"""The runbook's re-enable percentage after a kill: back to a small canary (5%), not to where it was."""
INDEX_WAIT_S = 8.0
"""How long a listing waits for the index (below the CLI's 10 s timeout, so it hears why)."""
_WRONG_LAST_SEQUENCE = 10071
_RETRIES = 5

_json = msgspec.json.Encoder()
Make = Callable[[ControlView, str], Any]


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


class ControlApi:
    """The endpoint handlers, over one NATS connection (testable without the service)."""

    def __init__(self, nc: Client, js: JetStreamContext | None = None, *, evaluator: Any = None,
                 msg_ids: EngineIds | None = None, signer: CommandSigner | None = None) -> None:
        """``evaluator(js, rollout)`` judges a rollout now (default: ``engine.logtools.backtest.evaluate_rollout``).
        ``msg_ids``: the deployment's key (``EngineIds.load(settings)``); without it a key of
        this process only, so a request retried against another instance is not de-duplicated.
        ``signer``: the deployment's signing key (``CommandSigner.load(settings)``); without
        it a key of this process only, whose commands services verify only if given its ring."""
        self.nc = nc
        self.js = js or nc.jetstream()
        self.msg_ids = msg_ids or EngineIds.ephemeral()
        self.signer = signer or CommandSigner.ephemeral()
        self.started_ms = int(time.time() * 1000)
        self.evaluator = evaluator or evaluate_rollout
        self.index = LiveIndex(self.js)
        self.index_wait_s = INDEX_WAIT_S

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
        """One rollout in full (``rollout``), or one page of the listing (``engine/api/rollout_index.py``)."""
        if body.get("rollout") is None:
            return await self._status_page(body)
        rollout = rollout_of(body)
        counts = (await known_rollouts(self.js, rollout)).get(rollout)
        if not counts:
            raise ApiError(404, f"unknown rollout {rollout!r}: nothing in the log; `rollout status` lists rollouts")
        view = await read_control(self.js, rollout)
        policy = await policy_in_force(self, rollout)
        return {
            "rollout": rollout,
            "control": _builtins(view.state),
            "last_command": _command_summary(view),
            "counts": counts,
            "stats": await self._kv_json(subjects.kv_key("stats", rollout)),
            "evaluation": await self._kv_json(subjects.kv_key("rollback", rollout)),
            "thresholds": policy_document(policy),
            "progression": progression_view(policy, view.state),
            "propagation": await status_section(self.js, view),  # who applied the revision (engine/api/propagation.py)
        }

    async def _status_page(self, body: dict[str, Any]) -> dict[str, Any]:
        """Up to ``limit`` rollouts in name order after ``cursor``, filtered by phase
        (``state``) and name ``prefix``; ``next_cursor`` asks for the next page (None: last)."""
        limit, cursor, phase, prefix = page_of(body, DEFAULT_LIMIT, MAX_LIMIT)
        try:  # shielded: a request that stops waiting leaves the first read of the log going on
            index = await asyncio.wait_for(asyncio.shield(self.index.ready()), self.index_wait_s)
        except TimeoutError:
            raise ApiError(503, f"the API is still reading the rollouts from the log ({len(self.index.index.names):,} "
                                "so far; about 10 s per 100,000 at its start); try again in a few seconds") from None
        page = index.page(limit, cursor, phase, prefix)
        return {
            "rollouts": [{"rollout": name, "phase": transitions.phase(state), "control": _builtins(state)}
                         for name, state in page.items],
            "next_cursor": page.next_cursor,
            "limit": limit,
            "total": len(index.names),
            "phases": {p: index.phases[p] for p in transitions.PHASES},
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

    # --- changes: one guarded publish -------------------------------------------------------
    async def _change(self, rollout: str, request_id: str, make: Make) -> dict[str, Any]:
        """Read the state, build the command, publish it guarded by the last control seq.

        ``make(view, id)`` returns the command to publish from the current state, or None
        when there is nothing to change; it is called again with the new state when
        another change won the race.
        """
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
            kind = kind_of(event)
            subject, data = subjects.for_event(event), encode(event)
            headers.update(self.signer.headers(subject, data))
            try:
                ack = await self.js.publish(subject, data, headers=headers, timeout=5)
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

    async def kill(self, rollout: str, actor: str, reason: str, request_id: str,
                   action: OperatorAction | None = None) -> dict[str, Any]:
        """The operator's kill (``events.transitions.kill``); no change when already killed.

        The ``abort`` verb and the older ``rollback`` endpoint both come here.
        """
        await self._require_known(rollout)

        def make(view: ControlView, eid: str) -> KillSwitch | None:
            if view.state.kill_switch:
                return None
            return transitions.kill_command(view.state, id=eid, rollout=rollout, time_ms=now_ms(), producer="api",
                                            actor=actor, reason=f"manual: {reason}", action=action)

        return await self._change(rollout, request_id, make)

    async def rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        """The older name of ``abort``: the same kill, with no ``action`` recorded."""
        return await self.kill(rollout_of(body), actor_of(body), reason_of(body, required=True), request_id_of(body))

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout, actor = rollout_of(body), actor_of(body)
        reason, rid = reason_of(body, required=False), request_id_of(body)
        pct = pct_of(body.get("canary_pct", RESUME_DEFAULT_PCT))
        await self._require_known(rollout)
        view = await read_control(self.js, rollout)
        if not view.state.kill_switch:
            raise ApiError(409, f"rollout {rollout!r} is not killed (canary at {view.state.canary_pct:g}%); "
                                "use `rollout set` to change the percentage")

        def make(view: ControlView, eid: str) -> Any:
            if not view.state.kill_switch:
                return None
            return transitions.resume_command(view.state, pct, id=eid, rollout=rollout, time_ms=now_ms(),
                                              producer="api", actor=actor, reason=reason or f"re-enable at {pct:g}%",
                                              action="resume")

        return await self._change(rollout, rid, make)

    async def config(self, body: dict[str, Any]) -> dict[str, Any]:
        rollout, actor = rollout_of(body), actor_of(body)
        reason, rid = reason_of(body, required=False), request_id_of(body)
        unknown = set(body) - {"rollout", "actor", "reason", "request_id", "canary_pct", "kill_switch",
                               "policy", "create"}
        if unknown:
            raise ApiError(400, f"unknown field(s) {sorted(unknown)}; config takes canary_pct, kill_switch, policy")
        pct = pct_of(body["canary_pct"]) if "canary_pct" in body else None
        kill = body.get("kill_switch")
        if kill is not None and not isinstance(kill, bool):
            raise ApiError(400, f"kill_switch: expected true or false, got {kill!r}")
        if pct is None and kill is None and body.get("policy") is None:
            raise ApiError(400, "nothing to change: give canary_pct, kill_switch or policy")
        await self._require_known(rollout, create=bool(body.get("create")))
        if kill is True:
            return await self.kill(rollout, actor, reason or "kill switch set by config", rid)
        view0 = await read_control(self.js, rollout)
        if kill is False and view0.state.kill_switch:
            return await self.resume({**body, "canary_pct": pct if pct is not None else RESUME_DEFAULT_PCT})
        if pct is not None and pct > 0 and view0.state.kill_switch:
            raise ApiError(409, f"rollout {rollout!r} is killed; lift the kill switch with `rollout resume` first")
        policy = policy_of(body, view0.state.policy_version + 1)

        def make(view: ControlView, eid: str) -> Any:
            state = view.state
            after = transitions.configure(state, canary_pct=pct, new_policy=policy is not None)
            if after == state:
                return None
            return transitions.config_command(state, canary_pct=pct, policy=policy, id=eid, rollout=rollout,
                                              time_ms=now_ms(), producer="api", actor=actor,
                                              reason=reason or _describe_change(state, after, policy), action="set")

        return await self._change(rollout, rid, make)

    async def evaluate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Judge the rollout now (a read-only fold); a kill the log lacks is published
        through the guarded publish unless ``act`` is false."""
        rollout = rollout_of(body)
        await self._require_known(rollout)
        reply, missing = await self.evaluator(self.js, rollout)
        killed_now = False
        if missing is not None and body.get("act", True):

            def make(view: ControlView, _eid: str) -> KillSwitch | None:
                if view.state.kill_switch:
                    return None
                return msgspec.structs.replace(missing, before=view.state, after=transitions.kill(view.state))

            killed_now = (await self._change(rollout, missing.id, make))["changed"]
        EVALUATIONS.labels("fail" if reply.get("would_kill") else "pass").inc()
        return {**reply, "killed_now": killed_now}


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
        "kind": kind_of(cmd),
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
async def serve_api(nc: Client, stop: asyncio.Event, ready: asyncio.Event | None = None,
                    msg_ids: EngineIds | None = None, signer: CommandSigner | None = None,
                    api: ControlApi | None = None) -> None:
    """Run the micro service on ``nc`` until ``stop`` is set (``msg_ids``, ``signer``: see :class:`ControlApi`;
    ``api``: handlers built by the caller, e.g. a test holding back its rollout index)."""
    api = api or ControlApi(nc, msg_ids=msg_ids, signer=signer)
    service = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION, queue_group=SERVICE_NAME,
                                description="rollout-engine operator API: status, abort, retry, promote, pause, unpause, "
                                            "resume, config, evaluate, health")
    for name in ENDPOINTS:
        func = handler_for(api, name) if name in VERB_ENDPOINTS else getattr(api, name)
        await service.add_endpoint(name=name, subject=subjects.api(name), handler=endpoint(name, func, nc))
    building = asyncio.ensure_future(api.index.ready())  # built now, so the first `rollout status` finds it
    building.add_done_callback(_log_build_failure)
    if ready is not None:
        await nc.flush()  # the server has the subscriptions: "ready" means a request is answered
        ready.set()
    try:
        await stop.wait()
    finally:
        await service.stop()
        building.cancel()
        await api.index.close()


def _log_build_failure(task: asyncio.Future[Any]) -> None:
    """A failed first read is retried by the next listing; say why it failed meanwhile."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("rollout index: first read of the log failed (%s); the next status listing retries",
                    task.exception())
