"""Rollback policies: the guards, statistics, hysteresis and actions of one rollout.

A policy is a plain document (TOML tables, or the ``policy`` mapping of a
:class:`events.ConfigChange`), validated here into frozen Structs. Every policy the
consumer obeys comes from the log, so a replay judges with the same versions; a rollout
with no policy in the log is judged by :data:`DEFAULT_POLICY` (version 0: quality drop
over 5 points, latency p95 over 1,600 ms, cost over 3 cents), which is part of the code
and therefore just as reproducible.

Example::

    >>> p = load_policy({"thresholds": {"max_quality_drop": 3.0}})
    >>> [g.name for g in p.all_guards()]
    ['quality', 'latency', 'cost']

The field reference lives in ``docs/rollback.md``.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from rollout_engine.consumers.rollback.presets import PRESETS, merge_preset, preset_names
from rollout_engine.events.errors import EventError
from rollout_engine.events.ids import TOKEN_PATTERN

__all__ = [
    "DEFAULT_POLICY",
    "EscalationConfig",
    "Guard",
    "Hysteresis",
    "Policy",
    "PolicyError",
    "Progression",
    "SrmConfig",
    "Staged",
    "Thresholds",
    "load_policy",
    "load_policy_file",
    "policy_document",
]

Name = Annotated[str, Meta(pattern=TOKEN_PATTERN)]
Ms = Annotated[int, Meta(ge=0, le=30 * 24 * 3600 * 1000)]
PositiveInt = Annotated[int, Meta(ge=1, le=1_000_000)]
Alpha = Annotated[float, Meta(gt=0.0, lt=1.0)]
Number = Annotated[float, Meta(ge=-1e12, le=1e12)]
Pct = Annotated[float, Meta(ge=0.0, le=100.0)]
Aggregate = Literal["mean", "rate", "p50", "p95", "p99"]
Mode = Literal["absolute", "increase", "decrease", "ratio"]
Comparator = Literal["gt", "ge", "lt", "le"]
Window = Literal["last_n", "time", "all"]
Test = Literal["none", "sequential", "mann_whitney"]

QUALITY = "quality"
"""Metric name that means ``Outcome.quality`` rather than a :class:`events.Metric`."""


class PolicyError(EventError):
    """A policy document is invalid; names the field, the rule and what to do."""

    def __init__(self, field: str, rule: str, hint: str = "") -> None:
        super().__init__(field, rule, hint)
        self.args = (f"invalid policy: {field}: {rule}" + (f" ({hint})" if hint else ""),)

    def __str__(self) -> str:
        return str(self.args[0])


class Guard(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One regression guard on any metric.

    ``observed`` is the candidate's aggregate (``absolute``), candidate minus baseline
    (``increase``), baseline minus candidate (``decrease``) or candidate over baseline
    (``ratio``); the guard fails when ``observed <comparator> threshold``.
    """

    name: Name
    metric: Name
    threshold: Number
    aggregate: Aggregate = "mean"
    mode: Mode = "absolute"
    comparator: Comparator = "gt"
    window: Window = "last_n"
    recovery_threshold: Number | None = None
    penalty_threshold_add: Annotated[float, Meta(ge=0.0, le=1e12)] = 0.0
    min_samples: PositiveInt | None = None
    min_baseline_samples: PositiveInt | None = None
    test: Test = "none"
    alpha: Alpha = 0.05
    min_effect: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.2
    unit: Annotated[str, Meta(max_length=16)] = ""

    @property
    def relative(self) -> bool:
        """True when the guard compares with the baseline (needs baseline samples)."""
        return self.mode != "absolute"

    @property
    def recovery(self) -> float:
        """The value the guard must get back to before it counts as recovered."""
        return self.threshold if self.recovery_threshold is None else self.recovery_threshold


class Thresholds(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The three built-in guards: quality drop (points), latency p95 (ms), cost (cents).

    A negative value disables that guard; anything else belongs in a generic :class:`Guard`."""

    max_quality_drop: Number = 5.0
    max_latency_p95_ms: Number = 1600.0
    max_cost_cents: Number = 3.0


class Hysteresis(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Anti-flap controls, in event-time milliseconds: how long a breach must last, how long
    a recovery, how long after a kill nothing moves, and the penalty for a flapping guard."""

    sustain_ms: Ms = 0
    recovery_sustain_ms: Ms = 0
    hold_down_ms: Ms = 30_000
    min_failures: PositiveInt = 1
    check_interval_ms: Ms = 1_000
    inconclusive_limit: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    flap_detection: bool = True
    flap_window_ms: Ms = 300_000
    max_toggles: PositiveInt = 4
    penalty_ms: Ms = 60_000


class SrmConfig(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Sample-ratio mismatch: chi-squared of the observed split against ``canary_pct``,
    confirmed (``sequential``) by an always-valid Bayes factor above ``1/p_value``."""

    enabled: bool = True
    p_value: Alpha = 0.001
    min_decisions: PositiveInt = 200
    sequential: bool = True


class Staged(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Staged rollback: canary percentages to step down through, ending at 0 (the kill).

    Empty (the default) kills at once. Steps are ``hold_down_ms`` apart; a guard that
    recovers in between stops the descent where it is.
    """

    steps: Annotated[list[Pct], Meta(max_length=10)] = []


class Progression(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Automatic progression: move up ``steps`` after ``healthy_intervals`` healthy intervals.

    An interval with fewer than ``min_samples`` new candidate samples extends the step
    instead of counting.
    """

    enabled: bool = False
    steps: Annotated[list[Pct], Meta(max_length=20)] = msgspec.field(
        default_factory=lambda: [5.0, 10.0, 20.0, 50.0, 100.0]
    )
    healthy_intervals: PositiveInt = 3
    interval_ms: Annotated[int, Meta(ge=1, le=30 * 24 * 3600 * 1000)] = 60_000
    min_samples: Annotated[int, Meta(ge=0, le=1_000_000)] = 30


class EscalationConfig(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``threshold`` breaches of one guard within ``window_ms`` arm a flag for ``ttl_ms``
    (3 in 24 hours arm it for 4 hours: the fix is not working, a human should look)."""

    threshold: PositiveInt = 3
    window_ms: Ms = 24 * 3600 * 1000
    ttl_ms: Ms = 4 * 3600 * 1000


class Policy(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Everything the rollback consumer needs to judge one rollout."""

    name: Name = "default"
    version: Annotated[int, Meta(ge=0, le=2**53)] = 0
    dry_run: bool = False
    min_samples: PositiveInt = 30
    min_baseline_samples: PositiveInt = 10
    last_n: PositiveInt = 100
    window_ms: Annotated[int, Meta(ge=1, le=30 * 24 * 3600 * 1000)] = 300_000
    sequential_n: PositiveInt = 5_000
    thresholds: Thresholds = Thresholds()
    guards: Annotated[list[Guard], Meta(max_length=32)] = []
    hysteresis: Hysteresis = Hysteresis()
    srm: SrmConfig = SrmConfig()
    staged: Staged = Staged()
    progression: Progression = Progression()
    escalation: EscalationConfig = EscalationConfig()

    def all_guards(self) -> list[Guard]:
        """The three built-in guards (unless disabled with -1) followed by the generic guards."""
        t = self.thresholds
        out: list[Guard] = []
        if t.max_quality_drop >= 0:
            out.append(Guard(name="quality", metric=QUALITY, threshold=t.max_quality_drop, mode="decrease"))
        if t.max_latency_p95_ms >= 0:
            out.append(Guard(name="latency", metric="latency_ms", aggregate="p95", threshold=t.max_latency_p95_ms, unit="ms"))
        if t.max_cost_cents >= 0:
            out.append(Guard(name="cost", metric="cost_cents", threshold=t.max_cost_cents, unit="¢"))
        return out + list(self.guards)


DEFAULT_POLICY = Policy()
"""The built-in policy (version 0) of a rollout with no policy in its log: the canary
split system's guards, no statistics, kill at once -- the ``canary-split`` preset's
numbers under the name ``default``."""


def _check(policy: Policy) -> Policy:
    names = [g.name for g in policy.all_guards()]
    dupes = sorted({n for n in names if names.count(n) > 1} | ({"srm"} & set(names)))
    if dupes:
        raise PolicyError("policy.guards", f"guard names must be unique and not 'srm'; repeated or reserved: {dupes}",
                          "rename the generic guard, or disable the built-in guard with -1 in [thresholds]")
    for i, guard in enumerate(policy.guards):
        if guard.test == "mann_whitney" and not guard.relative:
            raise PolicyError(f"policy.guards[{i}].test", "mann_whitney compares two distributions; it needs a relative mode",
                              "set mode to increase, decrease or ratio, or use test = 'sequential'")
        if guard.test == "sequential" and guard.aggregate not in ("mean", "rate"):
            raise PolicyError(f"policy.guards[{i}].test", f"the sequential test is on means; aggregate {guard.aggregate!r} is a percentile",
                              "use aggregate = 'mean' or 'rate', or test = 'mann_whitney' for distributions")
        if guard.recovery_threshold is not None:
            worse = guard.comparator in ("gt", "ge")
            if (worse and guard.recovery_threshold > guard.threshold) or (not worse and guard.recovery_threshold < guard.threshold):
                raise PolicyError(f"policy.guards[{i}].recovery_threshold", "must be on the healthy side of threshold",
                                  "for a 'gt' guard use recovery_threshold <= threshold")
    steps = policy.staged.steps
    if steps and (steps[-1] != 0.0 or any(b >= a for a, b in itertools.pairwise(steps))):
        raise PolicyError("policy.staged.steps", f"must strictly decrease and end at 0, got {steps}", "for example [50, 25, 0]")
    up = policy.progression.steps
    if policy.progression.enabled and (not up or any(b <= a for a, b in itertools.pairwise(up))):
        raise PolicyError("policy.progression.steps", f"must strictly increase, got {up}", "for example [5, 10, 20, 50, 100]")
    return policy


def load_policy(document: Mapping[str, Any], *, version: int | None = None, where: str = "policy") -> Policy:
    """Validate a policy document; raise :class:`PolicyError` naming the bad field.

    ``preset = NAME`` in the document starts from that preset (:mod:`.presets`) and
    overrides it with the document's other fields.

    ``version`` (from the ConfigChange that carried the document) overrides the
    document's own ``version`` so the log, not the author, numbers policy versions.
    """
    data = dict(document)
    if "preset" in data:
        name = data["preset"]
        if not isinstance(name, str) or name not in PRESETS:
            raise PolicyError(f"{where}.preset", f"unknown preset {name!r}",
                              f"use one of {preset_names()} (docs/rollback.md lists them)")
        data = merge_preset(name, data)
    if version is not None:
        data["version"] = version
    try:
        policy = msgspec.convert(data, Policy, strict=True)
    except msgspec.ValidationError as exc:
        error = EventError.from_msgspec(exc)
        field = error.field.replace("$", where, 1)
        raise PolicyError(field, error.rule, "see docs/rollback.md for every field") from None
    return _check(policy)


def load_policy_file(path: str | Path) -> Policy:
    """Read a policy from TOML: either a ``[policy]`` table or the top level."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise PolicyError(str(path), "file does not exist", "pass the path of a policy TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(str(path), f"not valid TOML: {exc}", "see docs/examples/policy.toml") from None
    return load_policy(data.get("policy", data), where=f"{path}:policy")


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as a plain mapping, for the ``policy`` field of a ConfigChange."""
    return msgspec.to_builtins(policy)  # type: ignore[no-any-return]
