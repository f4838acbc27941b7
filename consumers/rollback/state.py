"""What the rollback consumer remembers per rollout: the persisted half of the fold.

Plain msgspec Structs (array-like, canonical msgpack), one :class:`RolloutState` per
rollout, stored by the runtime as that rollout's snapshot part together with its
canary-stats fold. Everything here is data; :mod:`.projection` owns the behaviour.
"""

from __future__ import annotations

import msgspec

from rollout_engine.consumers.rollback.escalation import EscalationBook
from rollout_engine.consumers.rollback.hysteresis import GuardMachine
from rollout_engine.consumers.rollback.policy import DEFAULT_POLICY, Policy
from rollout_engine.consumers.rollback.progression import Progress
from rollout_engine.consumers.rollback.stats_tests import TestResult
from rollout_engine.events import ControlState

__all__ = ["CachedTest", "PolicyRun", "RolloutState"]


class CachedTest(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A statistical test result and when it ran (tests re-run once per check interval)."""

    at_ms: int
    result: TestResult


class PolicyRun(msgspec.Struct, array_like=True, gc=False):
    """One policy judging one rollout: its machines, cached tests and staged position."""

    policy: Policy
    machines: dict[str, GuardMachine] = msgspec.field(default_factory=dict)
    tests: dict[str, CachedTest] = msgspec.field(default_factory=dict)
    tripped_ms: int = -1
    last_step_ms: int = -1


class RolloutState(msgspec.Struct, array_like=True, gc=False):
    """Everything the consumer knows about one rollout (plus its canary-stats fold)."""

    control: ControlState = ControlState()
    live: PolicyRun = msgspec.field(default_factory=lambda: PolicyRun(DEFAULT_POLICY))
    shadow: PolicyRun | None = None
    now_ms: int = 0
    epoch: int = 0
    killed_ms: int = -1
    srm_pct: float = -1.0
    srm_baseline: int = 0
    srm_candidate: int = 0
    candidate_total: int = 0
    progress: Progress = msgspec.field(default_factory=Progress)
    escalation: EscalationBook = msgspec.field(default_factory=EscalationBook)
    kills: int = 0
    would_kills: int = 0
    policy_error: str = ""
    shape: list[int] = msgspec.field(default_factory=list)  # (last_n, window_ms, time_cap) of the evidence
