"""Sticky bucketing (engine.assignment): pure functions, no I/O."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rollout_engine.engine.sdk.assignment import BUCKETS, bucket, choose, clamp_pct, threshold
from rollout_engine.events import ControlState

units = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
pcts = st.floats(min_value=-50, max_value=150, allow_nan=False)


@given(unit=units)
def test_bucket_is_sticky_and_in_range(unit: str) -> None:
    first = bucket("checkout-v2", unit)
    assert 0 <= first < BUCKETS
    assert bucket("checkout-v2", unit) == first


@settings(max_examples=300)
@given(unit=units, p=pcts, q=pcts)
def test_raising_the_percentage_never_moves_a_unit_back(unit: str, p: float, q: float) -> None:
    low, high = sorted((p, q))
    b = bucket("checkout-v2", unit)
    at_low = choose(ControlState(canary_pct=clamp_pct(low)), b)
    at_high = choose(ControlState(canary_pct=clamp_pct(high)), b)
    if at_low.reason == "canary":
        assert at_high.reason == "canary"


@settings(max_examples=100)
@given(batch=st.lists(units, min_size=50, max_size=200, unique=True), p=pcts, q=pcts)
def test_only_units_between_p_and_q_move(batch: list[str], p: float, q: float) -> None:
    low, high = sorted((clamp_pct(p), clamp_pct(q)))
    moved = [
        u for u in batch
        if choose(ControlState(canary_pct=low), bucket("r", u)).variant
        != choose(ControlState(canary_pct=high), bucket("r", u)).variant
    ]
    for u in moved:
        assert threshold(low) <= bucket("r", u) < threshold(high)


def test_percentages_are_clamped() -> None:
    assert clamp_pct(-5) == 0 and clamp_pct(150) == 100 and clamp_pct(math.nan) == 0
    assert threshold(0.07) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    everyone = [choose(ControlState(canary_pct=100), b).reason for b in (0, BUCKETS - 1)]
    nobody = [choose(ControlState(canary_pct=0), b).reason for b in (0, BUCKETS - 1)]
    assert everyone == ["canary", "canary"] and nobody == ["default", "default"]


def test_kill_switch_overrides_everything_to_the_baseline() -> None:
    state = ControlState(canary_pct=100, kill_switch=True, baseline="v1", candidate="v2")
    assert choose(state, 0) == ("v1", "kill_switch", 1.0)


def test_variant_names_and_propensity_come_from_the_state() -> None:
    state = ControlState(canary_pct=20, baseline="planner-v1", candidate="planner-v2")
    assert choose(state, 0) == ("planner-v2", "canary", 0.2)
    assert choose(state, 5000) == ("planner-v1", "default", 0.8)


def test_split_is_within_one_point_over_100k_units() -> None:
    for pct in (1, 10, 37.5, 90):
        state = ControlState(canary_pct=pct)
        share = sum(choose(state, bucket("split", f"user-{i}")).reason == "canary" for i in range(100_000))
        assert abs(share / 1000 - pct) < 1.0, (pct, share)


def test_rollouts_hash_independently() -> None:
    same = sum(bucket("a", f"u{i}") == bucket("b", f"u{i}") for i in range(10_000))
    assert same < 20  # ~1 expected by chance
