"""How a parallel replay shares its work between processes: whole projections, and shares
of the rollouts of the projections that allow it.

A projection folded whole needs every message, so splitting by projection alone is
bounded by the most expensive one: on the bench workload the rollback fold costs about
60% of a replay, and two processes went only 1.2x faster than one. A projection whose
``separable`` flag is set (``consumers.projection.RolloutProjection``: each rollout's
part depends only on that rollout's messages and the ticks, the meta part only on the
ticks) is split by rollout instead: a process folds it for the rollouts it owns, plus
every message that names no rollout (ticks), and the parts are merged at the end.

The plan is made from what the replay measured on its first messages (the cost of each
projection) and from the size of each rollout's messages in the rest of the log: whole
projections go, largest first, to the least loaded process; then each rollout of the
separable projections, largest first, to the least loaded process, its cost taken as its
share of the bytes. Every process still decodes every message and keeps the one seen
set (``consumers.dedupe``), so de-duplication is exactly the one-process replay's, even
when the seen set reaches its cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rollout_engine.events import LogMessage, subjects

__all__ = ["Plan", "plan_split", "rollout_of", "rollout_weights"]

_ROLLOUT_OF: dict[str, str | None] = {}


def rollout_of(subject: str) -> str | None:
    """The rollout a subject names (None: a tick, or a subject of no rollout), cached:
    a log has few distinct subjects and this runs once per message."""
    try:
        return _ROLLOUT_OF[subject]
    except KeyError:
        pass
    try:
        rollout = subjects.parse(subject).rollout
    except ValueError:
        rollout = None  # a foreign subject: its message is rejected by every process alike
    if len(_ROLLOUT_OF) < 1_000_000:
        _ROLLOUT_OF[subject] = rollout
    return rollout


def rollout_weights(messages: Iterable[LogMessage]) -> dict[str, int]:
    """Bytes of the messages of each rollout: what folding a share of it will cost."""
    weights: dict[str, int] = {}
    for message in messages:
        rollout = rollout_of(message.subject)
        if rollout is not None:
            weights[rollout] = weights.get(rollout, 0) + len(message.data)
    return weights


@dataclass
class Plan:
    """Which process folds what: ``whole[w]`` the projections process ``w`` folds for
    every message; ``owner`` the process folding each rollout of the ``separable``
    projections (a rollout missing from it belongs to process 0)."""

    whole: list[set[str]]
    separable: set[str] = field(default_factory=set)
    owner: dict[str, int] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    """The measured cost planned for each process (seconds on the first messages)."""

    @property
    def workers(self) -> int:
        return len(self.whole)

    def owns(self, worker: int, rollout: str | None) -> bool:
        """Whether ``worker`` folds the separable projections for this rollout's messages
        (every process folds what names no rollout: the ticks)."""
        return rollout is None or self.owner.get(rollout, 0) == worker

    def busy(self, worker: int) -> bool:
        """Whether ``worker`` has anything to fold (process 0, the caller, always has)."""
        return worker == 0 or bool(self.whole[worker]) or worker in self.owner.values()


def plan_split(costs: Mapping[str, float], separable: Iterable[str], weights: Mapping[str, int],
               workers: int) -> Plan:
    """Share the projections (``costs``: name -> measured cost) among ``workers`` processes."""
    split = {name for name in separable if name in costs}
    loads = [0.0] * workers
    whole: list[set[str]] = [set() for _ in range(workers)]
    for name, cost in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])):
        if name in split and weights:
            continue
        w = min(range(workers), key=lambda i: (loads[i], i))
        whole[w].add(name)
        loads[w] += cost
    owner: dict[str, int] = {}
    total = sum(weights.values())
    if split and total:
        # A positive cost even when the warm-up measured none (a tiny head): rollouts are then shared by bytes.
        per_byte = max(sum(costs[name] for name in split), 1e-9) / total
        for rollout, weight in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
            w = min(range(workers), key=lambda i: (loads[i], i))
            owner[rollout] = w
            loads[w] += weight * per_byte
    return Plan(whole, split if total else set(), owner, loads)
