"""``rollout wait ROLLOUT --for CONDITION [--timeout D]``: block until a rollout gets there.

For CI pipelines and scripts, like ``kubectl argo rollouts status --timeout``. It
follows the rollout live (``engine/cli/watch.py``: control commands and the rollback
consumer's evaluation, pushed by NATS, no polling) and exits as soon as the condition
is decided:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     the condition is met
1     the rollout reached the opposite terminal state instead: aborted while waiting
      for ``healthy``, ``promoted`` or ``step=N``; promoted (100%) while waiting for
      ``killed``
2     error: bad arguments, unknown rollout, no NATS (the message says which)
3     ``--timeout`` passed first
====  ==========================================================================

Conditions:

- ``killed``: the kill switch is on (an abort, or the rollback consumer's kill).
- ``promoted``: the candidate serves 100% with the kill switch off.
- ``step=N``: the canary reached progression step N (1-based, of the policy in force,
  as ``rollout status`` lists them) or beyond, kill switch off.
- ``healthy``: the rollback consumer's evaluation says ``healthy``: candidate traffic
  flowing, at least ``min_samples`` candidate decisions since the last (re)start, every
  live guard ``ok`` and no escalation armed.

A condition is a small object with the sources it needs and a ``judge(view)``; a new one
(for example ``--applied``: every live SDK instance acknowledged the kill) adds a source
in ``watch.py`` and a condition here, and keeps these exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import msgspec

from rollout_engine.engine.bus import connect
from rollout_engine.engine.cli.common import (
    CliError,
    add_json_flag,
    handler,
    sanitize,
    settings_from,
)
from rollout_engine.engine.cli.rollout_view import RolloutView
from rollout_engine.engine.cli.wait_applied import (
    add_applied_flag,
    applied_json,
    applied_lines,
    until_applied,
)
from rollout_engine.engine.cli.watch import follow, initial_view

__all__ = ["EXIT_ERROR", "EXIT_MET", "EXIT_OPPOSITE", "EXIT_TIMEOUT", "Condition", "parse_condition",
           "parse_duration", "register"]

EXIT_MET, EXIT_OPPOSITE, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
MET, OPPOSITE, PENDING = "met", "opposite", "pending"


class Condition(Protocol):
    """What ``wait`` waits for: a name, the watch sources it needs, and a judgement."""

    name: str
    sources: frozenset[str]

    def judge(self, view: RolloutView) -> str:
        """``met``, ``opposite`` (the other terminal state: exit 1) or ``pending``."""
        ...


@dataclass(frozen=True)
class Killed:
    name: str = "killed"
    sources: frozenset[str] = frozenset({"control"})

    def judge(self, view: RolloutView) -> str:
        if view.killed:
            return MET
        return OPPOSITE if view.canary_pct >= 100.0 else PENDING


@dataclass(frozen=True)
class Promoted:
    name: str = "promoted"
    sources: frozenset[str] = frozenset({"control"})

    def judge(self, view: RolloutView) -> str:
        if view.killed:
            return OPPOSITE
        return MET if view.canary_pct >= 100.0 else PENDING


@dataclass(frozen=True)
class Healthy:
    name: str = "healthy"
    sources: frozenset[str] = frozenset({"control", "evaluation"})

    def judge(self, view: RolloutView) -> str:
        if view.killed:
            return OPPOSITE
        return MET if view.verdict == "healthy" else PENDING


@dataclass(frozen=True)
class Step:
    number: int
    sources: frozenset[str] = frozenset({"control"})

    @property
    def name(self) -> str:
        return f"step={self.number}"

    def judge(self, view: RolloutView) -> str:
        if view.killed:
            return OPPOSITE
        return MET if view.step >= self.number else PENDING


_STEP = re.compile(r"step=([1-9][0-9]{0,2})")


def parse_condition(text: str) -> Condition:
    """``killed``, ``healthy``, ``promoted`` or ``step=N`` (N >= 1)."""
    simple: dict[str, Condition] = {"killed": Killed(), "healthy": Healthy(), "promoted": Promoted()}
    if text in simple:
        return simple[text]
    match = _STEP.fullmatch(text)
    if match:
        return Step(int(match.group(1)))
    raise argparse.ArgumentTypeError(f"expected killed, healthy, promoted or step=N (N >= 1), got {text!r}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h`` or ``500ms`` (0: wait forever)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _check_reachable(condition: Condition, view: RolloutView) -> None:
    if isinstance(condition, Step) and view.steps and condition.number > len(view.steps):
        raise CliError(f"--for {condition.name}: rollout {view.rollout!r} has {len(view.steps)} progression steps "
                       f"{[format(s, 'g') for s in view.steps]}; pick step=1..{len(view.steps)}", "invalid")


async def wait_for(args: argparse.Namespace) -> int:
    condition: Condition = args.condition
    settings = settings_from(args)
    started = time.monotonic()
    nc = await connect(settings, name="rollout-wait")
    try:
        view = await initial_view(nc, args.rollout)
        _check_reachable(condition, view)
        result, view = await _until_decided(nc, condition, view, args.timeout)
        result, applied = await until_applied(nc, args, result, view, started)  # --applied: engine/cli/wait_applied.py
    finally:
        await nc.close()
    waited = round(time.monotonic() - started, 3)
    code = {MET: EXIT_MET, OPPOSITE: EXIT_OPPOSITE}.get(result, EXIT_TIMEOUT)
    outcome = {MET: "met", OPPOSITE: "opposite", PENDING: "timeout"}[result]
    if args.json:
        line = {"rollout": args.rollout, "for": condition.name, "result": outcome, "exit_code": code,
                "waited_s": waited, **{k: v for k, v in view.summary().items() if k != "rollout"},
                **applied_json(applied)}
        sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
    else:
        state = f"{view.phase}, canary {view.canary_pct:g}%" + (f", {view.verdict}" if view.verdict else "")
        words = {"met": f"{condition.name}", "opposite": f"not {condition.name}: the rollout is {view.phase}",
                 "timeout": f"timed out after {args.timeout:g}s waiting for {condition.name}"}
        print(f"{sanitize(args.rollout)}: {words[outcome]} ({state}; waited {waited:g}s)")
        for text in applied_lines(applied):
            print(text)
    return code


async def _until_decided(nc: object, condition: Condition, view: RolloutView, timeout: float) -> tuple[str, RolloutView]:
    """Fold pushed changes until the condition is met or its opposite; ``pending`` on timeout."""
    changes = follow(nc, view.rollout, condition.sources, view)  # type: ignore[arg-type]
    latest = view

    async def decide() -> str:
        nonlocal latest
        async for change in changes:
            latest = change.view
            verdict = condition.judge(change.view)
            if verdict != PENDING:
                return verdict
        return PENDING

    try:
        return await asyncio.wait_for(decide(), timeout or None), latest
    except TimeoutError:
        return PENDING, latest
    finally:
        await changes.aclose()


HELP = """\
Block until a rollout is killed, healthy, promoted or at progression step N, following
it live (control commands and the rollback consumer's evaluation, pushed by NATS).

exit codes:
  0  the condition is met
  1  the rollout reached the opposite terminal state instead (aborted while waiting for
     healthy, promoted or step=N; promoted to 100% while waiting for killed)
  2  error: bad arguments, unknown rollout, no NATS
  3  --timeout passed first

conditions:
  killed     the kill switch is on
  promoted   the candidate serves 100%, kill switch off
  step=N     the canary reached progression step N (as `rollout status` lists them)
  healthy    the rollback consumer judges it healthy: candidate traffic, at least
             min_samples candidate decisions, every guard ok, no escalation armed

--applied (with --for killed): also wait until every live SDK instance has
acknowledged the kill (instances silent for longer than their TTL are stale and not
waited for); on timeout the output names the instances still lagging.

examples:
  rollout wait checkout-v2 --for promoted --timeout 30m
  rollout wait checkout-v2 --for killed --applied --timeout 30s
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("wait", help="block until a rollout is killed, healthy, promoted or at step N "
                                         "(exit 0 met, 1 opposite state, 2 error, 3 timeout)",
                            description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rollout", metavar="ROLLOUT")
    parser.add_argument("--for", dest="condition", required=True, type=parse_condition, metavar="CONDITION",
                        help="killed | healthy | promoted | step=N")
    parser.add_argument("--timeout", type=parse_duration, default=0.0, metavar="D",
                        help="give up after D (90s, 5m, 1h; default 0: wait forever) with exit code 3")
    add_applied_flag(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=handler(wait_for))
