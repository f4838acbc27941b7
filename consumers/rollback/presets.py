"""Named policy presets: ready policies a rollout applies with one word.

A preset is a policy document (the TOML tables as a mapping). A document that says
``preset = "recommended"`` starts from that preset and overrides it: tables merge key by
key, guards merge by name (a guard with a preset guard's name changes only the fields it
gives; a new name is added), any other list replaces the preset's. ``rollout set
--preset NAME`` publishes the merged document, so the log records every number the
consumer judged with, not a name whose meaning could change.

Adding a preset is one entry in :data:`PRESETS`; ``docs/rollback.md`` lists them with
where their numbers come from and their measured false kills, power and time to kill
(``rollout simulate --preset NAME``).

    >>> from rollout_engine.consumers.rollback.policy import load_policy
    >>> load_policy({"preset": "canary-split"}).thresholds.max_latency_p95_ms
    1600.0
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "merge_preset", "preset_names"]


@dataclass(frozen=True, slots=True)
class Preset:
    """One named policy: what it is for, where its numbers come from, the document."""

    name: str
    summary: str
    source: str
    document: Mapping[str, Any]


CANARY_SPLIT = Preset(
    name="canary-split",
    summary="absolute thresholds, judged on the last 100 samples, kill at once",
    source="the canary split system: kill when quality drops more than 5 points below the "
           "baseline, candidate p95 latency is above 1600 ms or its mean cost above 3.0 cents, "
           "with at least 30 candidate samples; the engine's built-in policy",
    document={
        "name": "canary-split",
        "min_samples": 30,
        "thresholds": {"max_quality_drop": 5.0, "max_latency_p95_ms": 1600.0, "max_cost_cents": 3.0},
    },
)

RECOMMENDED = Preset(
    name="recommended",
    summary="relative regressions confirmed by always-valid tests on every sample of the epoch",
    source="this engine's simulator (rollout simulate): A/A false kills under 1% at 10% and 50% "
           "splits with a long latency tail; quality -3 points, p95 +10% and cost +20% killed "
           "within 500 candidate samples in at least 95% of rollouts",
    document={
        "name": "recommended",
        "min_samples": 30,
        "min_baseline_samples": 30,
        "sequential_n": 1000,
        "thresholds": {"max_quality_drop": -1.0, "max_latency_p95_ms": -1.0, "max_cost_cents": -1.0},
        "guards": [
            {"name": "quality", "metric": "quality", "mode": "ratio", "comparator": "lt", "threshold": 0.98,
             "window": "all", "test": "sequential", "alpha": 0.005},
            {"name": "latency", "metric": "latency_ms", "aggregate": "p95", "mode": "ratio", "threshold": 1.0,
             "window": "all", "test": "mann_whitney", "alpha": 0.002, "min_effect": 0.05, "unit": "ms"},
            {"name": "cost", "metric": "cost_cents", "mode": "ratio", "threshold": 1.05,
             "window": "all", "test": "sequential", "alpha": 0.002, "unit": "¢"},
        ],
    },
)

STEERING = Preset(
    name="steering",
    summary="the confidence-steering system's hysteresis: 2 s sustain, 3 s recovery below the steer "
            "threshold, 30 s hold-down, flap penalty +15; a dry run until switched live",
    source="the confidence-steering system: steer after a breach sustained 2 s; recover after 3 s back "
           "below a recovery threshold lower than the steer threshold; 30 s hold-down after a steer; "
           "more than 4 toggles in 5 minutes add 15 to the threshold for 60 s; new policies start as dry "
           "runs. The steer threshold is the canary split's 5-point quality drop (recovery at 3 points), "
           "latency and cost keep the canary split's limits",
    document={
        "name": "steering",
        "dry_run": True,
        "min_samples": 30,
        "thresholds": {"max_quality_drop": -1.0, "max_latency_p95_ms": 1600.0, "max_cost_cents": 3.0},
        "guards": [
            {"name": "quality", "metric": "quality", "mode": "decrease", "threshold": 5.0,
             "recovery_threshold": 3.0, "penalty_threshold_add": 15.0},
        ],
        "hysteresis": {"sustain_ms": 2_000, "recovery_sustain_ms": 3_000, "hold_down_ms": 30_000,
                       "flap_detection": True, "max_toggles": 4, "flap_window_ms": 300_000, "penalty_ms": 60_000},
    },
)

ESCALATION = Preset(
    name="escalation",
    summary="the detect-escalate-fix loop: a guard's second breach within 24 h arms the flag, which "
            "stays until the fix is promoted or an operator clears it",
    source="the detect -> escalate -> fix loop: one failed fix (a second breach of the same guard after "
           "a re-enable, within a day) is the signal to escalate; the flag ends when the fixed candidate "
           "is promoted or by hand with a reason, and its 7-day time to live only bounds a forgotten one. "
           "The guards are the canary split's (the built-in policy's)",
    document={
        "name": "escalation",
        "escalation": {"threshold": 2, "window_ms": 86_400_000, "ttl_ms": 7 * 86_400_000},
    },
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CANARY_SPLIT, RECOMMENDED, STEERING, ESCALATION)}
"""Every preset by name. Add an entry to ship a new one."""


def preset_names() -> list[str]:
    """The preset names, sorted (for help texts and error messages)."""
    return sorted(PRESETS)


def _merge_guards(base: list[Any], override: list[Any]) -> list[Any]:
    out = [dict(g) for g in base]
    index = {g.get("name"): i for i, g in enumerate(out)}
    for guard in override:
        name = guard.get("name") if isinstance(guard, Mapping) else None
        if name in index:
            out[index[name]] = {**out[index[name]], **guard}
        else:
            out.append(guard)
    return out


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key == "guards" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_guards(out[key], value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_preset(name: str, document: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's document overridden by ``document`` (without its ``preset`` key).

    Raises ``KeyError`` for an unknown preset (the policy loader turns it into a
    :class:`~consumers.rollback.policy.PolicyError` naming the known ones).
    """
    preset = PRESETS[name]
    return _merge(preset.document, {k: v for k, v in document.items() if k != "preset"})
