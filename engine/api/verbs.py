"""The verbs operators know from Argo Rollouts: abort, retry, promote, pause, unpause.

Each is one endpoint of the ``rollout-api`` service (``ro.api.<verb>``) and, like every
change, one control command on the log with who (``actor``), why (``reason``), the
state before and after (the contract's transitions, ``events.transitions``: one
``config_version`` rule), and the verb itself in ``action``, so ``rollout events`` and
the notifier show it. They go through :meth:`ControlApi._change`, the API's one guarded
publish: validated first, published with optimistic concurrency over the rollout's
control subjects, idempotent by ``request_id``.

=========  ===============================================================================
abort      kill switch on, candidate to 0% (``KillSwitch``; ``rollout kill`` is its alias)
retry      after an abort: kill switch off, canary at the first progression step of the
           policy in force (``Resume``): the rollout starts again
promote    canary to the next progression step, or to 100% with ``full`` (``ConfigChange``)
pause      stop automatic progression (``ControlState.paused``); guards, kill switches and
           staged rollback keep running, manual moves still apply (``ConfigChange``)
unpause    let automatic progression move again, from a fresh interval (``ConfigChange``)
clear_     end armed escalation flags by hand, ``reason`` required, ``trigger`` optional
escalation (an ``expired`` ``Escalation`` per flag; a promotion ends them too)
=========  ===============================================================================

The progression steps are those of the live policy in force (the newest non-dry-run
policy in the rollout's config commands), else the built-in policy's
``[5, 10, 20, 50, 100]``; a policy need not enable automatic progression for
``promote`` and ``retry`` to use its steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rollout_engine.consumers.rollback.policy import DEFAULT_POLICY, Policy, load_policy
from rollout_engine.consumers.rollback.progression import next_up
from rollout_engine.engine.api.control_log import ControlView, read_control, read_policy_document
from rollout_engine.engine.api.requests import (
    ApiError,
    actor_of,
    now_ms,
    reason_of,
    request_id_of,
    rollout_of,
)
from rollout_engine.events import (
    ConfigChange,
    ControlState,
    Escalation,
    Resume,
    encode,
    subjects,
    transitions,
)
from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import command_id

if TYPE_CHECKING:
    from rollout_engine.engine.api.service import ControlApi

__all__ = ["VERB_ENDPOINTS", "handler_for", "policy_in_force", "progression_view"]

VERB_ENDPOINTS = ("abort", "retry", "promote", "pause", "unpause", "clear_escalation")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def policy_in_force(api: ControlApi, rollout: str) -> Policy:
    """The live policy the rollback consumer judges ``rollout`` with (the default if none)."""
    document, version = await read_policy_document(api.js, rollout)
    if document is None:
        return DEFAULT_POLICY
    try:
        return load_policy(document, version=version)
    except EventError:  # the API validates before publishing; a bad one is the consumer's to ignore
        return DEFAULT_POLICY


def progression_view(policy: Policy, state: ControlState) -> dict[str, Any]:
    """Where the canary is among the progression steps: ``step`` is 1-based, 0 below the first.

    ``rollout status`` prints it as ``step 2/5``; ``rollout wait --for step=N`` waits for it.
    """
    steps = list(policy.progression.steps)
    step = sum(1 for s in steps if s <= state.canary_pct) if not state.kill_switch else 0
    return {"enabled": policy.progression.enabled, "steps": steps, "step": step, "of": len(steps),
            "paused": state.paused}


def _base(body: dict[str, Any], allowed: set[str]) -> tuple[str, str, str, str]:
    unknown = set(body) - {"rollout", "actor", "reason", "request_id"} - allowed
    if unknown:
        raise ApiError(400, f"unknown field(s) {sorted(unknown)}; this verb takes rollout, actor, reason, "
                            f"request_id{''.join(', ' + a for a in sorted(allowed))}")
    return rollout_of(body), actor_of(body), reason_of(body, required=False), request_id_of(body)


async def abort(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """Kill switch on now; the reason is required (the first thing the runbook asks for)."""
    rollout, actor, _, rid = _base(body, set())
    return await api.kill(rollout, actor, reason_of(body, required=True), rid, action="abort")


async def retry(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """After an abort: kill switch off, canary at the first progression step."""
    rollout, actor, reason, rid = _base(body, set())
    await api._require_known(rollout)
    view = await read_control(api.js, rollout)
    if not view.state.kill_switch:
        raise ApiError(409, f"rollout {rollout!r} is not aborted (canary at {view.state.canary_pct:g}%); retry "
                            "restarts an aborted rollout; use `rollout promote` or `rollout set` to move it")
    steps = (await policy_in_force(api, rollout)).progression.steps
    first = steps[0] if steps else 5.0

    def make(view: ControlView, eid: str) -> Resume | None:
        if not view.state.kill_switch:
            return None
        return transitions.resume_command(view.state, first, id=eid, rollout=rollout, time_ms=now_ms(),
                                          producer="api", actor=actor,
                                          reason=reason or f"retry from the first step ({first:g}%)", action="retry")

    return await api._change(rollout, rid, make)


async def promote(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """Canary to the next progression step (``full``: to 100%)."""
    rollout, actor, reason, rid = _base(body, {"full"})
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise ApiError(400, f"full: expected true or false, got {full!r}")
    await api._require_known(rollout)
    view = await read_control(api.js, rollout)
    if view.state.kill_switch:
        raise ApiError(409, f"rollout {rollout!r} is aborted (kill switch on); `rollout retry` restarts it from "
                            "the first step, `rollout resume --canary-pct N` at a percentage")
    policy = await policy_in_force(api, rollout)

    def target_of(state: ControlState) -> float | None:
        if full:
            return 100.0 if state.canary_pct < 100.0 else None
        return next_up(policy.progression, state.canary_pct)

    if target_of(view.state) is None:
        raise ApiError(409, f"rollout {rollout!r} is already at {view.state.canary_pct:g}%, the last step of "
                            f"{list(policy.progression.steps)}; nothing to promote")

    def make(view: ControlView, eid: str) -> ConfigChange | None:
        target = target_of(view.state)
        if view.state.kill_switch or target is None:
            return None
        return transitions.config_command(view.state, canary_pct=target, id=eid, rollout=rollout, time_ms=now_ms(),
                                          producer="api", actor=actor,
                                          reason=reason or f"promote: canary {view.state.canary_pct:g} -> {target:g}%",
                                          action="promote_full" if full else "promote")

    return await api._change(rollout, rid, make)


async def _set_paused(api: ControlApi, body: dict[str, Any], paused: bool) -> dict[str, Any]:
    rollout, actor, reason, rid = _base(body, set())
    await api._require_known(rollout)
    verb = "pause" if paused else "unpause"

    def make(view: ControlView, eid: str) -> ConfigChange | None:
        if view.state.paused == paused:
            return None
        default = "automatic progression paused" if paused else "automatic progression resumed"
        return transitions.config_command(view.state, paused=paused, id=eid, rollout=rollout, time_ms=now_ms(),
                                          producer="api", actor=actor, reason=reason or default, action=verb)

    return await api._change(rollout, rid, make)


async def pause(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """Stop automatic progression (no change when already paused)."""
    return await _set_paused(api, body, True)


async def unpause(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """Let automatic progression move again (no change when not paused)."""
    return await _set_paused(api, body, False)


async def clear_escalation(api: ControlApi, body: dict[str, Any]) -> dict[str, Any]:
    """End armed escalation flags by hand, with a reason (required): one ``expired``
    Escalation per flag (``trigger``: only that guard's), recorded with who and why."""
    rollout, actor, _, rid = _base(body, {"trigger"})
    reason = reason_of(body, required=True)
    trigger = body.get("trigger")
    if trigger is not None and not isinstance(trigger, str):
        raise ApiError(400, f"trigger: expected a guard name, got {trigger!r}")
    await api._require_known(rollout)
    evaluation = await api._kv_json(subjects.kv_key("rollback", rollout)) or {}
    armed = [t for t in evaluation.get("escalations") or [] if trigger in (None, t)]
    if not armed:
        raise ApiError(409, f"no escalation flag {'' if trigger is None else repr(trigger) + ' '}is armed on "
                            f"rollout {rollout!r} (`rollout status` lists them)")
    cleared = []
    for name in armed:
        event = Escalation(id=command_id("api", rollout, rid, name), rollout=rollout, time_ms=now_ms(),
                           producer="api", actor=actor, reason=f"cleared by hand: {reason}", trigger=name,
                           state="expired")
        ack = await api.js.publish(subjects.for_event(event), encode(event), headers=api.msg_ids.headers(event.id),
                                   timeout=5)
        cleared.append({"trigger": name, "id": event.id, "seq": ack.seq, "duplicate": bool(ack.duplicate)})
    return {"rollout": rollout, "changed": True, "cleared": cleared}


_VERBS: dict[str, Callable[[ControlApi, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "abort": abort, "retry": retry, "promote": promote, "pause": pause, "unpause": unpause,
    "clear_escalation": clear_escalation,
}


def handler_for(api: ControlApi, name: str) -> Handler:
    """The endpoint handler of verb ``name`` bound to ``api``."""
    verb = _VERBS[name]

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return await verb(api, body)

    handle.__name__ = name
    return handle
