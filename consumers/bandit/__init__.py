"""Policy bandit (issue 6): Thompson sampling over arms, fed by joined outcomes.

- :mod:`consumers.bandit.posterior`: arm statistics and P(best) by quadrature;
- :mod:`consumers.bandit.state`: the policy table and the view published to KV;
- :mod:`consumers.bandit.projection`: the fold (joins, reward wait, late outcomes);
- :mod:`consumers.bandit.clock`: event time shared with the verification queue.
"""

from __future__ import annotations

from rollout_engine.consumers.bandit.projection import BanditProjection
from rollout_engine.consumers.bandit.state import BanditPolicy, BanditView, kv_key, parse_policy

__all__ = ["BanditPolicy", "BanditProjection", "BanditView", "kv_key", "parse_policy"]
