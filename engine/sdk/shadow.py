"""Shadow compare: run the variant that was not served, and say how it differed.

Running both variants on a request and counting which named dimensions of the result
changed (for an agent planner: agent, steps, tools, dry_run) shows how far a candidate
diverges before it serves anyone. Here a *differ* maps (baseline result, candidate
result) to named dimensions -> changed; the default one knows those four dimensions and
falls back to one ``result`` dimension. The shadow is isolated from the caller: its
exception, a timeout or a failing differ become ``ShadowResult.error``, never the
caller's problem.

Callables are zero-argument and may be sync or async. A sync callable runs inline on
the event loop, so it cannot be timed out while it runs: make slow work async (or wrap
it with ``asyncio.to_thread``) to get the timeout's protection.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rollout_engine.events import ShadowResult
from rollout_engine.events.fields import MAX_DIMENSIONS, MAX_TEXT
from rollout_engine.events.ids import is_token

__all__ = ["PLANNER_DIMENSIONS", "Differ", "Observed", "compare", "default_differ", "invoke", "observe"]

PLANNER_DIMENSIONS = ("agent", "steps", "tools", "dry_run")
"""What an agent planner's result is compared on by default: which agent, which steps, which tools, dry run."""

Differ = Callable[[Any, Any], Mapping[str, bool]]
"""``differ(baseline_result, candidate_result) -> {dimension: changed}``."""


def default_differ(baseline: Any, candidate: Any) -> dict[str, bool]:
    """The four planner dimensions for mappings that carry any of them, else ``result``.

    >>> default_differ({"agent": "a", "steps": [1]}, {"agent": "b", "steps": [1]})
    {'agent': True, 'steps': False}
    """
    if isinstance(baseline, Mapping) and isinstance(candidate, Mapping):
        present = [d for d in PLANNER_DIMENSIONS if d in baseline or d in candidate]
        if present:
            return {d: baseline.get(d) != candidate.get(d) for d in present}
    return {"result": baseline != candidate}


async def invoke(fn: Callable[[], Any]) -> Any:
    """Call a zero-argument callable and await its result if it is awaitable."""
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass(frozen=True, slots=True)
class Observed:
    """What a shadow run produced: its result, or the error text, and how long it took."""

    result: Any = None
    error: str | None = None
    latency_ms: float = 0.0


async def observe(fn: Callable[[], Any], timeout: float) -> Observed:
    """Run the shadow with a timeout; never raises (except cancellation of the caller)."""
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(invoke(fn), timeout)
    except TimeoutError:
        return Observed(error=f"timeout after {timeout:g}s", latency_ms=_since(start))
    except Exception as exc:
        return Observed(error=f"{type(exc).__name__}: {exc}", latency_ms=_since(start))
    return Observed(result=result, latency_ms=_since(start))


def _since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _clean(text: str) -> str:
    """Error text that fits the contract's Text field: no control characters, bounded."""
    cleaned = "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)
    return cleaned[:MAX_TEXT]


def compare(
    shadow_variant: str,
    observed: Observed,
    baseline_result: Any,
    candidate_result: Any,
    differ: Differ | None = None,
) -> ShadowResult:
    """Build the ShadowResult: the differ's dimensions, or the shadow's (or differ's) error.

    Dimension names must be subject-safe tokens; at most 32 are kept, sorted by name.
    """
    if observed.error is not None:
        return ShadowResult(variant=shadow_variant, error=_clean(observed.error), latency_ms=observed.latency_ms)
    try:
        raw = (differ or default_differ)(baseline_result, candidate_result)
        diff = {str(k): bool(v) for k, v in dict(raw).items()}
        bad = [k for k in diff if not is_token(k)]
        if bad:
            raise ValueError(f"dimension names must be 1-64 of A-Z a-z 0-9 _ -, got {bad[:3]}")
    except Exception as exc:
        return ShadowResult(
            variant=shadow_variant,
            error=_clean(f"differ failed: {type(exc).__name__}: {exc}"),
            latency_ms=observed.latency_ms,
        )
    kept = dict(sorted(diff.items())[:MAX_DIMENSIONS])
    return ShadowResult(variant=shadow_variant, diff=kept, latency_ms=observed.latency_ms)
