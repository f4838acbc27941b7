"""The bandit's policy document and the view it publishes to KV for the SDK.

A rollout opts in with a ``BanditConfig`` event whose ``bandit`` table is a
:class:`BanditPolicy`; the consumer validates it, so every policy version is in the log.
The consumer publishes one :class:`BanditView` per rollout under KV key
``bandit.<rollout>`` (``events.subjects.kv_key("bandit", rollout)``);
``engine.sdk.choice.BanditChooser`` reads nothing else.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from rollout_engine.events import GuardrailState
from rollout_engine.events.schema import Finite, Token

__all__ = ["BanditPolicy", "BanditView", "RewardKind", "parse_policy"]

RewardKind = Literal["binary", "gaussian"]
"""How outcomes become rewards: 0/1 (Beta posterior) or a number (Gaussian posterior)."""


class BanditPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``bandit`` table of a ``BanditConfig`` event (fields and defaults: docs/bandit.md)."""

    arms: Annotated[list[Token], Meta(min_length=1, max_length=32)]
    reward: RewardKind = "binary"
    default_arm: Token | None = None
    discount: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    floor: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.01
    min_samples: Annotated[int, Meta(ge=0, le=1_000_000)] = 20
    reward_wait_s: Annotated[float, Meta(ge=0.0, le=30 * 24 * 3600.0)] = 600.0
    default_reward: Finite = 0.0
    neutral_reward: Finite = 0.5
    prior_mean: Finite = 0.0
    prior_var: Annotated[float, Meta(gt=0.0, le=1e12)] = 1.0
    max_contexts: Annotated[int, Meta(ge=1, le=4096)] = 64

    @property
    def fallback(self) -> str:
        """The arm served when the bandit is disabled."""
        return self.default_arm or self.arms[0]


def parse_policy(raw: object) -> BanditPolicy:
    """Validate a ``bandit`` table; raise ValueError saying what is wrong and how to fix it."""
    try:
        policy = msgspec.convert(raw, BanditPolicy)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bandit policy: {exc}; see docs/bandit.md for the fields") from None
    if len(set(policy.arms)) != len(policy.arms):
        raise ValueError(f"bandit policy: arms must be unique, got {policy.arms}")
    if policy.default_arm is not None and policy.default_arm not in policy.arms:
        raise ValueError(f"bandit policy: default_arm {policy.default_arm!r} is not one of arms {policy.arms}")
    if policy.floor * len(policy.arms) > 1.0:
        raise ValueError(f"bandit policy: floor {policy.floor} x {len(policy.arms)} arms exceeds 1; lower the floor")
    return policy


class BanditView(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What ``choose()`` needs, published to KV: arm weights per context and guardrails.

    ``weights[context]`` is aligned with ``arms`` (context ``""`` is the default) and sums
    to 1; it is the probability each arm is served, i.e. the propensity to log.
    """

    rollout: str
    seq: int
    time_ms: int
    enabled: bool
    arms: list[str]
    default_arm: str
    weights: dict[str, list[float]]
    warm: bool
    guardrail: GuardrailState
    normal_times: list[int] = []
    policy_version: int = 0
