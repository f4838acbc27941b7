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

PRESETS: dict[str, Preset] = {p.name: p for p in (CANARY_SPLIT, RECOMMENDED)}
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
