"""Shadow compare (engine.shadow): differs, isolation of failures and timeouts."""

from __future__ import annotations

import asyncio

from rollout_engine.engine.sdk.shadow import compare, default_differ, observe


def test_default_differ_uses_seed_dimensions_for_plans() -> None:
    v1 = {"agent": "triage", "steps": [1, 2], "tools": ["mail"], "dry_run": False, "extra": 1}
    v2 = {"agent": "triage", "steps": [1, 3], "tools": ["mail"], "dry_run": True, "extra": 2}
    assert default_differ(v1, v2) == {"agent": False, "steps": True, "tools": False, "dry_run": True}


def test_default_differ_falls_back_to_one_result_dimension() -> None:
    assert default_differ(3, 3) == {"result": False}
    assert default_differ({"a": 1}, {"a": 2}) == {"result": True}


async def test_failing_shadow_is_recorded_not_raised() -> None:
    def boom() -> None:
        raise KeyError("no plan")

    observed = await observe(boom, timeout=1)
    result = compare("candidate", observed, "base", None)
    assert result.error == "KeyError: 'no plan'" and result.diff == {}


async def test_slow_shadow_times_out() -> None:
    async def slow() -> int:
        await asyncio.sleep(10)
        return 1

    observed = await observe(slow, timeout=0.02)
    assert observed.error == "timeout after 0.02s" and observed.latency_ms < 5000


async def test_async_shadow_result_and_latency() -> None:
    async def fine() -> dict[str, str]:
        return {"agent": "b"}

    observed = await observe(fine, timeout=1)
    result = compare("candidate", observed, {"agent": "a"}, observed.result)
    assert result.diff == {"agent": True} and result.error is None and result.latency_ms is not None


def test_user_differ_and_its_failures() -> None:
    from rollout_engine.engine.sdk.shadow import Observed

    ok = compare("v2", Observed(result=2), 1, 2, differ=lambda a, b: {"sign": a * b < 0, "size": a != b})
    assert ok.diff == {"sign": False, "size": True}
    bad_name = compare("v2", Observed(result=2), 1, 2, differ=lambda a, b: {"has space": True})
    assert bad_name.error is not None and "dimension names" in bad_name.error
    raising = compare("v2", Observed(result=2), 1, 2, differ=lambda a, b: 1 / 0)
    assert raising.error is not None and raising.error.startswith("differ failed: ZeroDivisionError")


def test_error_text_is_cleaned_to_fit_the_contract() -> None:
    from rollout_engine.engine.sdk.shadow import Observed

    result = compare("v2", Observed(error="line1\nline2\x00" + "x" * 5000), None, None)
    assert result.error is not None and "\n" not in result.error and len(result.error) == 1024
