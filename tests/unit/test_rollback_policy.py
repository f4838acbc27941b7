"""Policy documents: defaults, validation with field paths, TOML files, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_engine.consumers.rollback.policy import (
    DEFAULT_POLICY,
    PolicyError,
    load_policy,
    load_policy_file,
    policy_document,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "policy.toml"


def test_default_policy_is_seed_001() -> None:
    guards = {g.name: g for g in DEFAULT_POLICY.all_guards()}
    assert guards["quality"].threshold == 5.0 and guards["quality"].mode == "decrease"
    assert guards["latency"].threshold == 1600.0 and guards["latency"].aggregate == "p95"
    assert guards["cost"].threshold == 3.0
    assert DEFAULT_POLICY.min_samples == 30 and DEFAULT_POLICY.last_n == 100 and DEFAULT_POLICY.window_ms == 300_000


def test_negative_threshold_disables_a_seed_guard() -> None:
    policy = load_policy({"thresholds": {"max_cost_cents": -1}})
    assert [g.name for g in policy.all_guards()] == ["quality", "latency"]


def test_errors_name_the_field_and_the_fix() -> None:
    with pytest.raises(PolicyError, match=r"policy\.guards\[0\]\.threshold: Expected `float`"):
        load_policy({"guards": [{"name": "err", "metric": "error", "threshold": "high"}]})
    with pytest.raises(PolicyError, match="unknown field `sustain`"):
        load_policy({"hysteresis": {"sustain": 2}})
    with pytest.raises(PolicyError, match="needs a relative mode"):
        load_policy({"guards": [{"name": "p", "metric": "m", "threshold": 1, "test": "mann_whitney"}]})
    with pytest.raises(PolicyError, match="repeated or reserved"):
        load_policy({"guards": [{"name": "latency", "metric": "m", "threshold": 1}]})
    with pytest.raises(PolicyError, match="end at 0"):
        load_policy({"staged": {"steps": [50, 25]}})
    with pytest.raises(PolicyError, match="healthy side"):
        load_policy({"guards": [{"name": "e", "metric": "m", "threshold": 1, "recovery_threshold": 2}]})


def test_version_comes_from_the_log_not_the_author() -> None:
    assert load_policy({"version": 99}, version=4).version == 4


def test_document_round_trip() -> None:
    policy = load_policy({"name": "strict", "guards": [{"name": "errors", "metric": "error", "aggregate": "rate",
                                                        "threshold": 0.02, "test": "sequential"}]})
    assert load_policy(policy_document(policy)) == policy


def test_example_policy_file_loads(tmp_path: Path) -> None:
    policy = load_policy_file(EXAMPLE)
    assert policy.name == "checkout" and policy.all_guards()
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nmin_samples = 0\n")
    with pytest.raises(PolicyError, match=r"bad\.toml:policy\.min_samples"):
        load_policy_file(bad)


def test_a_preset_is_a_base_the_document_overrides() -> None:
    policy = load_policy({"preset": "recommended", "name": "checkout", "hysteresis": {"sustain_ms": 2000},
                          "guards": [{"name": "latency", "alpha": 0.001},
                                     {"name": "errors", "metric": "error", "aggregate": "rate", "mode": "increase",
                                      "threshold": 0.01, "test": "sequential"}]})
    guards = {g.name: g for g in policy.all_guards()}
    assert policy.name == "checkout" and policy.hysteresis.sustain_ms == 2000
    assert policy.hysteresis.hold_down_ms == 30_000  # tables merge key by key
    assert guards["latency"].alpha == 0.001 and guards["latency"].test == "mann_whitney"  # guards by name
    assert list(guards) == ["quality", "latency", "cost", "errors"]
    assert load_policy(policy_document(policy)) == policy  # the expanded document stands alone
    with pytest.raises(PolicyError, match=r"policy\.preset: unknown preset 'fast'.*canary-split"):
        load_policy({"preset": "fast"})


def test_set_preset_publishes_the_expanded_document(tmp_path: Path) -> None:
    import argparse

    from rollout_engine.engine.cli.common import CliError
    from rollout_engine.engine.cli.control import _policy_document

    override = tmp_path / "override.toml"
    override.write_text('[policy]\nname = "shop"\n[policy.thresholds]\nmax_cost_cents = 4.0\n')
    document = _policy_document(argparse.Namespace(policy=str(override), preset="canary-split"))
    assert "preset" not in document and document["name"] == "shop"
    assert document["thresholds"] == {"max_quality_drop": 5.0, "max_latency_p95_ms": 1600.0, "max_cost_cents": 4.0}
    plain = _policy_document(argparse.Namespace(policy=str(override), preset=None))
    assert plain == {"name": "shop", "thresholds": {"max_cost_cents": 4.0}}  # no preset: sent as written
    both = tmp_path / "both.toml"
    both.write_text('[policy]\npreset = "recommended"\n')
    with pytest.raises(CliError, match="give one preset"):
        _policy_document(argparse.Namespace(policy=str(both), preset="canary-split"))
