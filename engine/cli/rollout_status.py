"""``rollout status ROLLOUT``: one rollout's state, and why it is in that state.

Control state, the last command with its actor, time, reason and breach numbers (the
first thing the rollback runbook asks for), per-variant stats and the thresholds in
force. It asks the API; when no API runs it reads the log itself with the same code.
"""

from __future__ import annotations

import argparse
from typing import Any

from rollout_engine.engine.api.client import NO_API, ApiError, call
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    color,
    print_json,
    sanitize,
    settings_from,
    when,
)
from rollout_engine.engine.cli.propagation_view import propagation_lines
from rollout_engine.engine.cli.watch import watch

__all__ = ["next_page_hint", "rollouts_page", "show_rollout"]


async def rollouts_page(nc: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One page of the rollout listing (``limit``, ``cursor``, ``state``, ``prefix``), each
    row with the line the text output prints.

    Asks the API; when no API runs, the same code runs here (it reads the whole log once:
    slower at 100,000 rollouts, but an incident may be the moment the API is down). A
    refused request (a bad ``--limit``...) is a CliError naming the flag.
    """
    try:
        reply = await call(nc, "status", request, timeout=10)
    except ApiError as exc:
        if exc.code != 503 or not exc.message.startswith(NO_API):  # a busy API is not a missing one
            raise CliError.from_api(exc.code, exc.message) from None
        from rollout_engine.engine.api.service import ControlApi  # loads the statistics: only here

        local = ControlApi(nc)
        local.index_wait_s = 300.0  # this command reads the log itself: waiting is the answer
        try:
            reply = await local.status(request)
        except ApiError as inner:
            raise CliError.from_api(inner.code, inner.message) from None
        except Exception as inner:  # e.g. an operator credential, which may not read ro.evt.> itself
            raise CliError(f"no rollout API is running and this credential cannot read the log "
                           f"({type(inner).__name__}: {inner}); start the API (`rollout up` or `rollout api`)",
                           "unavailable") from None
        finally:
            await local.index.close()
    for row in reply.get("rollouts", []):
        control = row["control"]
        flag = "KILLED" if control["kill_switch"] else f"canary {control['canary_pct']:g}%"
        row.update(kill_switch=control["kill_switch"], canary_pct=control["canary_pct"],
                   line=f"{sanitize(row['rollout'])}: {flag}, {row.get('phase', '?')}")
    return reply


def next_page_hint(reply: dict[str, Any], request: dict[str, Any]) -> str:
    """What the text output ends a page with: the command that shows the next one."""
    shown, total = len(reply.get("rollouts", [])), reply.get("total", 0)
    cursor = reply.get("next_cursor")
    if cursor is None:
        return f"rollouts: {shown} shown of {total} in the log; last page"
    flags = " ".join(f"--{k} {v}" for k, v in request.items() if k in ("limit", "state", "prefix"))
    return (f"rollouts: {shown} shown of {total} in the log; next page: "
            f"`rollout status {flags + ' ' if flags else ''}--cursor {cursor}` (every page: --all)")


async def show_rollout(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if getattr(args, "watch", False):
        nc = await connect(settings, name="rollout-watch")
        try:
            return await watch(nc, args, _print)
        finally:
            await nc.close()
    nc = await connect(settings, name="rollout-status", reconnect=False)
    try:
        try:
            reply = await call(nc, "status", {"rollout": args.rollout})
        except ApiError as exc:
            if exc.code != 503:
                raise CliError.from_api(exc.code, exc.message) from None
            # No API running: read the log here (the service loads the statistics, hence the late import).
            from rollout_engine.engine.api.service import ControlApi

            try:
                reply = await ControlApi(nc).status({"rollout": args.rollout})
            except ApiError as inner:
                raise CliError.from_api(inner.code, inner.message) from None
    finally:
        await nc.close()
    if args.json:
        print_json(reply)
        return 0
    _print(reply)
    return 0


def _print(reply: dict[str, Any]) -> None:
    state = reply["control"]
    flag = color("KILLED", "31") if state["kill_switch"] else color(f"canary {state['canary_pct']:g}%", "32")
    print(f"rollout {sanitize(reply['rollout'])}: {flag}  (config v{state['config_version']}, "
          f"policy v{state['policy_version']}, {sanitize(state['baseline'])} vs {sanitize(state['candidate'])})")
    _print_progression(reply.get("progression"), state)
    counts = reply.get("counts") or {}
    if counts:
        print("log     " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    cmd = reply.get("last_command")
    if cmd:
        print(f"last    {cmd['kind']} by {sanitize(cmd['actor'])} at {when(cmd['time_ms'])}, log seq {cmd['seq']}: "
              f"{sanitize(cmd['reason'], 400)}")
        for breach in cmd.get("breaches", []):
            base = "" if breach.get("baseline") is None else f", baseline {breach['baseline']:g}"
            print(f"  breach {sanitize(breach['guard'])}: observed {breach['observed']:g} vs threshold "
                  f"{breach['threshold']:g}{base} (n={breach['candidate_n']}/{breach['baseline_n']}"
                  f"{'' if breach.get('p_value') is None else ', p=' + format(breach['p_value'], '.3g')})")
    else:
        print("last    no control command yet (default state)")
    for line in propagation_lines(reply.get("propagation")):  # who applied it (engine/cli/propagation_view.py)
        print(line)
    _print_stats(reply.get("stats"))
    _print_evaluation(reply.get("evaluation"))
    _print_thresholds(reply.get("thresholds"))


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _print_thresholds(document: Any) -> None:
    """The live policy in force and each of its guards' thresholds (built-in and generic)."""
    if not isinstance(document, dict):
        return
    from rollout_engine.consumers.rollback.policy import PolicyError, load_policy

    try:
        policy = load_policy(document)
    except (PolicyError, TypeError, ValueError):
        return
    parts = []
    for g in policy.all_guards():
        what = {"absolute": g.aggregate, "increase": f"{g.aggregate} rise", "decrease": f"{g.aggregate} drop",
                "ratio": f"{g.aggregate} ratio"}[g.mode]
        unit = "" if g.mode == "ratio" else sanitize(g.unit)
        parts.append(f"{sanitize(g.name)} {what} {_OPS[g.comparator]} {g.threshold:g}{unit}")
    print(f"guards  policy {sanitize(policy.name)} v{policy.version} in force: " + (", ".join(parts) or "none"))


def _print_progression(progression: Any, state: dict[str, Any]) -> None:
    """Where the canary is among the policy's steps, and whether an operator paused it."""
    if not isinstance(progression, dict):
        if state.get("paused"):
            print("steps   automatic progression PAUSED (`rollout unpause` lifts it)")
        return
    steps = ", ".join(format(s, "g") for s in progression.get("steps", []))
    mode = "automatic" if progression.get("enabled") else "manual (`rollout promote`)"
    paused = ", PAUSED (`rollout unpause` lifts it)" if state.get("paused") else ""
    print(f"steps   {progression.get('step', 0)}/{progression.get('of', 0)} of [{steps}]%, {mode}{paused}")


def _num(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _print_stats(stats: Any) -> None:
    """Per window and variant: decisions, quality, latency p95, cost, error rate."""
    if not isinstance(stats, dict) or not isinstance(stats.get("windows"), dict):
        return
    for window, variants in stats["windows"].items():
        if not isinstance(variants, dict):
            continue
        for variant, view in sorted(variants.items()):
            if not isinstance(view, dict):
                continue
            latency = (view.get("metrics") or {}).get("latency_ms") or {}
            print(f"stats   {sanitize(str(window)):<8} {sanitize(str(variant)):<12} decisions {view.get('decisions', 0):>6}  "
                  f"quality {_num(view.get('quality_mean'))} (n={view.get('quality_n', 0)})  "
                  f"p95 latency {_num(latency.get('p95'), '.0f')}ms  cost {_num(view.get('cost_mean'), '.2f')}  "
                  f"errors {_num(view.get('error_rate'), '.2%')}")


def _judged(guard: dict[str, Any]) -> str:
    """``breaching``, ``ok``, ``insufficient 12/30``...; older consumers published only ``state``."""
    word = sanitize(str(guard.get("judged") or guard.get("state")))
    if word == "insufficient":
        word += f" {guard.get('n', 0)}/{guard.get('need', 0)}"
    return word + (" (flap penalty)" if guard.get("penalized") else "")


def _print_evaluation(evaluation: Any) -> None:
    """The rollback consumer's last judgement: policy, each guard's state, escalations."""
    if not isinstance(evaluation, dict) or not evaluation:
        return
    policy = evaluation.get("policy") or {}
    guards = evaluation.get("guards") or {}
    states = ", ".join(f"{sanitize(str(g))}={_judged(v)}" for g, v in sorted(guards.items())
                       if isinstance(v, dict)) or "no guard judged yet"
    print(f"eval    policy {sanitize(str(policy.get('name', '?')))} v{policy.get('version', '?')}: {states}; "
          f"kills {evaluation.get('kills', 0)}, escalations {evaluation.get('escalations') or 'none'}")
    shadow = evaluation.get("shadow")
    if isinstance(shadow, dict):
        sp, sg = shadow.get("policy") or {}, shadow.get("guards") or {}
        judged = ", ".join(f"{sanitize(str(g))}={_judged(v)}" for g, v in sorted(sg.items()) if isinstance(v, dict))
        print(f"        dry run: policy {sanitize(str(sp.get('name', '?')))} v{sp.get('version', '?')}: "
              f"{judged or 'no guard judged yet'}; would-kills {evaluation.get('would_kills', 0)}")
    if evaluation.get("kill_switch"):
        recovered = evaluation.get("recovered_ms", -1)
        if isinstance(recovered, int) and recovered >= 0:
            print(f"        recovered: every guard passed the policy's recovery rule at {when(recovered)}; "
                  "the kill switch stays on until `rollout resume`")
        else:
            print("        killed: guards are judged on (no command while killed); not recovered")
    if evaluation.get("policy_error"):
        print(f"        policy error: {sanitize(str(evaluation['policy_error']), 300)}")
