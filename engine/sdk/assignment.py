"""Sticky bucketing: which variant serves a unit, from the control state alone.

A (rollout, unit) pair hashes with murmur3 (``mmh3``, as Unleash does) into one of
``BUCKETS`` buckets; the unit gets the candidate iff its bucket is below the canary
percentage expressed in buckets. So the choice is

* deterministic and sticky: the same pair always lands in the same bucket, in every
  process and language that hashes ``f"{rollout}:{unit}"`` with murmur3 x86_32, seed 0;
* monotone: raising the percentage from p to q only moves the units whose bucket lies
  in [p, q) from baseline to candidate; nobody flips back;
* independent across rollouts: the rollout id is part of the key, so the same users are
  not always the first canaries of every rollout.

The kill switch overrides everything to the baseline. Pure functions, no I/O: the SDK
calls them on its hot path and the unit tests call them directly.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import mmh3

from rollout_engine.events import ControlState

__all__ = ["BUCKETS", "SEED", "Choice", "Split", "bucket", "choose", "clamp_pct", "split_of", "threshold"]

BUCKETS = 10_000
"""Resolution of the split: 0.01 percentage points."""
SEED = 0

Reason = Literal["default", "canary", "kill_switch"]


class Choice(NamedTuple):
    """The served variant, why, and the probability of serving it under this state."""

    variant: str
    reason: Reason
    propensity: float


def clamp_pct(pct: float) -> float:
    """Clamp a canary percentage to [0, 100]; NaN counts as 0 (the safe side)."""
    if pct != pct:  # NaN
        return 0.0
    return min(100.0, max(0.0, float(pct)))


def threshold(pct: float) -> int:
    """Number of candidate buckets for ``pct`` percent (rounded, so 0.07% is 7 buckets,
    not the 8 that ``0.07 * 100 = 7.000000000000001`` would give)."""
    return round(clamp_pct(pct) * (BUCKETS / 100))


def bucket(rollout: str, unit: str) -> int:
    """The unit's bucket in ``[0, BUCKETS)`` for this rollout."""
    return mmh3.hash(f"{rollout}:{unit}", SEED, signed=False) % BUCKETS


class Split(NamedTuple):
    """A control state reduced to what the hot path needs; computed once per state change.

    ``cut`` is the number of candidate buckets (0 under the kill switch).
    """

    cut: int
    candidate: Choice
    baseline: Choice

    def pick(self, unit_bucket: int) -> Choice:
        return self.candidate if unit_bucket < self.cut else self.baseline


def split_of(state: ControlState) -> Split:
    """Precompute the choice for ``state``.

    Propensity is P(served variant | state): pct/100 for the candidate, 1 - pct/100 for
    the baseline, 1.0 under the kill switch (no randomness left).
    """
    if state.kill_switch:
        killed = Choice(state.baseline, "kill_switch", 1.0)
        return Split(0, killed, killed)
    cut = threshold(state.canary_pct)
    share = cut / BUCKETS
    return Split(cut, Choice(state.candidate, "canary", share), Choice(state.baseline, "default", 1.0 - share))


def choose(state: ControlState, unit_bucket: int) -> Choice:
    """The variant for a unit in ``unit_bucket`` under ``state`` (see :func:`split_of`)."""
    return split_of(state).pick(unit_bucket)
