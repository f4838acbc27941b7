"""``rollout bandit``: the self-learning loop's settings and switches, as audited events.

    rollout bandit config ROLLOUT --arms a,b,c [--reward binary] [--floor 0.01] ...
    rollout bandit guardrail ROLLOUT --bandit off --reason incident-42
    rollout bandit show ROLLOUT [--json]

``config`` publishes a ``BanditConfig`` (validated here and again by the consumers);
``guardrail`` publishes a ``Guardrail`` event whose ``before`` is the state the bandit
consumer last published, so the switches that used to be environment variables become
log entries with who, why, before and after. ``show`` prints the published view (weights, guardrails).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from rollout_engine.consumers.bandit.state import BanditView, parse_policy
from rollout_engine.consumers.verification import parse_verification_policy
from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    print_json,
    sanitize,
    settings_from,
)
from rollout_engine.engine.cli.control import default_actor
from rollout_engine.events import (
    BanditConfig,
    Event,
    Guardrail,
    GuardrailState,
    encode,
    new_event_id,
    subjects,
)
from rollout_engine.events.ids import is_token

__all__ = ["register"]


def _actor(args: argparse.Namespace) -> str:
    actor = args.actor or default_actor()
    if not is_token(actor):
        raise CliError(f"--actor {actor!r}: expected 1-64 of A-Z a-z 0-9 _ - (or set ROLLOUT_ACTOR)")
    return actor


def _rollout(args: argparse.Namespace) -> str:
    if not is_token(args.rollout):
        raise CliError(f"rollout {args.rollout!r}: expected 1-64 of A-Z a-z 0-9 _ -")
    return args.rollout  # type: ignore[no-any-return]


async def _read_view(args: argparse.Namespace, rollout: str) -> BanditView | None:
    """The rollout's published bandit view (KV), or None when there is none yet."""
    nc = await connect(settings_from(args), name="rollout-bandit", reconnect=False)
    try:
        kv = await nc.jetstream().key_value(subjects.STATE_BUCKET)
        entry = await kv.get(subjects.kv_key("bandit", rollout))
    except (KeyNotFoundError, BucketNotFoundError, NotFoundError):
        return None
    finally:
        await nc.close()
    return msgspec.msgpack.decode(entry.value, type=BanditView) if entry.value else None


async def _publish(args: argparse.Namespace, event: Event, command: str) -> None:
    from rollout_engine.engine.stack.msg_ids import EngineIds
    from rollout_engine.engine.stack.signing import CommandSigner

    settings = settings_from(args)
    nc = await connect(settings, name="rollout-bandit", reconnect=False)
    try:
        js = nc.jetstream()
        subject, data = subjects.control(event.rollout, command), encode(event)
        await js.publish(subject, data, headers={**EngineIds.load(settings).headers(event.id),
                                                 **CommandSigner.load(settings).headers(subject, data)})
    finally:
        await nc.close()


def _bandit_table(args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, Any] = {"arms": [a.strip() for a in args.arms.split(",") if a.strip()]}
    for flag in ("reward", "default_arm", "discount", "floor", "min_samples", "reward_wait_s", "default_reward",
                 "neutral_reward", "max_contexts"):
        value = getattr(args, flag)
        if value is not None:
            table[flag] = value
    return table


async def _config(args: argparse.Namespace) -> int:
    rollout = _rollout(args)
    bandit = _bandit_table(args)
    verification = {k: v for k, v in (("retry_interval_s", args.retry_interval_s), ("max_attempts", args.max_attempts),
                                      ("min_confidence", args.min_confidence)) if v is not None}
    try:
        parse_policy(bandit)
        parse_verification_policy(verification)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    now = time.time_ns() // 1_000_000
    event = BanditConfig(
        id=new_event_id(now), rollout=rollout, time_ms=now, producer="cli", actor=_actor(args),
        reason=args.reason, bandit=bandit, verification=verification or None,
    )
    await _publish(args, event, "bandit_config")
    if args.json:
        print_json(event)
    else:
        print(f"bandit config for {sanitize(rollout)}: arms {bandit['arms']} (event {event.id})")
    return 0


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


async def _guardrail(args: argparse.Namespace) -> int:
    rollout = _rollout(args)
    view = await _read_view(args, rollout)
    before = view.guardrail if view is not None else GuardrailState()
    changes: dict[str, Any] = {}
    for flag, field in (("bandit", "bandit_enabled"), ("executor", "executor_enabled"),
                        ("real_apply", "real_apply"), ("normal_canary", "normal_canary")):
        value = _switch(getattr(args, flag))
        if value is not None:
            changes[field] = value
    if args.mode:
        changes["mode_default"] = args.mode
    if args.max_per_hour is not None:
        changes["normal_max_per_hour"] = args.max_per_hour
    if args.min_priority is not None:
        changes["normal_min_priority"] = args.min_priority
    if args.allowed_risk:
        changes["normal_allowed_risk"] = tuple(r.strip() for r in args.allowed_risk.split(",") if r.strip())
    if args.cooldown_s is not None:
        changes["cooldown_s"] = args.cooldown_s
    if args.lift_cooldown:
        changes["cooldown_until_ms"] = 0
    if not changes:
        raise CliError("nothing to change: give at least one switch (see `rollout bandit guardrail --help`)")
    try:
        after = msgspec.convert(msgspec.to_builtins(before) | msgspec.to_builtins(changes), GuardrailState)
    except msgspec.ValidationError as exc:
        raise CliError(f"guardrail: {exc}") from None
    now = time.time_ns() // 1_000_000
    event = Guardrail(
        id=new_event_id(now), rollout=rollout, time_ms=now, producer="cli", actor=_actor(args),
        reason=args.reason, before=before, after=after,
    )
    await _publish(args, event, "guardrail")
    if args.json:
        print_json(event)
    else:
        print(f"guardrails of {sanitize(rollout)}: {', '.join(f'{k}={v}' for k, v in changes.items())} (event {event.id})")
    return 0


async def _show(args: argparse.Namespace) -> int:
    rollout = _rollout(args)
    view = await _read_view(args, rollout)
    if view is None:
        raise CliError(f"no bandit view for {sanitize(rollout)}: configure it with `rollout bandit config` "
                       "and run the bandit consumer")
    if args.json:
        print_json(view)
        return 0
    g = view.guardrail
    print(f"rollout {sanitize(rollout)}: bandit {'on' if view.enabled else 'OFF'}, "
          f"{'warm' if view.warm else 'warming up (uniform)'}, default arm {view.default_arm}")
    for context, weights in view.weights.items():
        shares = ", ".join(f"{a} {w:.3f}" for a, w in zip(view.arms, weights, strict=False))
        print(f"  weights [{context or 'default'}]: {shares}")
    print(f"  executor {'on' if g.executor_enabled else 'OFF'}, mode {g.mode_default}, normal canary "
          f"{'on' if g.normal_canary else 'off'} (max {g.normal_max_per_hour}/h, priority >= {g.normal_min_priority}, "
          f"risk {list(g.normal_allowed_risk)}), cooldown until {g.cooldown_until_ms or '-'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("bandit", help="policy bandit settings, guardrail switches and published view",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = parser.add_subparsers(dest="bandit_command", metavar="SUBCOMMAND")
    inner.required = True

    config = inner.add_parser("config", help="set a rollout's arms and bandit/verification settings")
    config.add_argument("rollout", metavar="ROLLOUT")
    config.add_argument("--arms", required=True, help="comma-separated arm (variant) names")
    config.add_argument("--reward", choices=["binary", "gaussian"], help="posterior family (default binary)")
    config.add_argument("--default-arm", help="arm served when the bandit is disabled (default: first)")
    config.add_argument("--discount", type=float, help="discount per reward in (0, 1] for drifting rewards (1)")
    config.add_argument("--floor", type=float, help="minimum share of every arm (0.01)")
    config.add_argument("--min-samples", type=int, help="rewards every arm needs before reweighting (20)")
    config.add_argument("--reward-wait-s", type=float, help="seconds to wait for an outcome (600)")
    config.add_argument("--default-reward", type=float, help="reward of a decision with no outcome in time (0)")
    config.add_argument("--neutral-reward", type=float, help="reward of a neutral verdict (0.5)")
    config.add_argument("--max-contexts", type=int, help="contexts tracked per rollout (64)")
    config.add_argument("--retry-interval-s", type=float, help="verification re-check interval (300)")
    config.add_argument("--max-attempts", type=int, help="verification re-checks before expiry (3)")
    config.add_argument("--min-confidence", type=float, help="confidence below which an outcome is re-checked (0.8)")
    config.add_argument("--reason", default="bandit settings", help="why (recorded in the log)")
    config.add_argument("--actor", help="operator identity (default $ROLLOUT_ACTOR, then $USER)")
    add_json_flag(config)
    config.set_defaults(handler=handler(_config))

    guard = inner.add_parser("guardrail", help="switch the bandit, the executor, modes or the normal canary on or off")
    guard.add_argument("rollout", metavar="ROLLOUT")
    onoff = ["on", "off"]
    guard.add_argument("--bandit", choices=onoff, help="off: serve the default arm (ENABLE_POLICY_BANDIT)")
    guard.add_argument("--executor", choices=onoff, help="off: nothing executes (ENABLE_EXPERIMENT_EXECUTOR)")
    guard.add_argument("--real-apply", choices=onoff, help="ENABLE_EXECUTOR_REAL_APPLY")
    guard.add_argument("--normal-canary", choices=onoff, help="ENABLE_NORMAL_MODE_CANARY")
    guard.add_argument("--mode", choices=["safe", "normal"], help="EXECUTION_MODE_DEFAULT")
    guard.add_argument("--max-per-hour", type=int, help="NORMAL_MODE_MAX_PER_HOUR")
    guard.add_argument("--min-priority", type=float, help="NORMAL_MODE_MIN_PRIORITY")
    guard.add_argument("--allowed-risk", help="NORMAL_MODE_ALLOWED_RISK, comma-separated: low,medium,high")
    guard.add_argument("--cooldown-s", type=int, help="NORMAL_MODE_COOLDOWN_SECONDS")
    guard.add_argument("--lift-cooldown", action="store_true", help="end a running loss cooldown now")
    guard.add_argument("--reason", required=True, help="why (recorded in the log)")
    guard.add_argument("--actor", help="operator identity (default $ROLLOUT_ACTOR, then $USER)")
    add_json_flag(guard)
    guard.set_defaults(handler=handler(_guardrail))

    show = inner.add_parser("show", help="the published bandit view: weights per context and guardrails")
    show.add_argument("rollout", metavar="ROLLOUT")
    add_json_flag(show)
    show.set_defaults(handler=handler(_show))
