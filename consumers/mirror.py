"""The KV mirror: one publishing rule for every consumer that shows its state in KV.

Consumers whose state people, dashboards or SDKs read (control state, canary-stats
summaries, bandit views, rollback evaluations) mirror it, one key per rollout, into KV
``ro_state`` under ``<kind>.<rollout>`` (``events.subjects.kv_key``). The mirror is an
edge, not the reducer: it reads the wall clock to pace itself, never the fold.

The rule, the same for every consumer:

1. after each committed batch, every rollout whose snapshot part changed is *pending*
   (in first-touched order; a rollout already pending keeps its place);
2. a *round* starts when none is running and ``interval_s`` has passed since the last
   one started (0: after every commit); a commit that comes sooner sets a timer for the
   moment it may start, so a value reaches KV at most ``interval_s`` (plus the round's
   own time) after its commit, even when no further commit follows. It takes pending rollouts in order and computes
   their values for at most ``budget_s`` of wall clock (what is left goes first next
   round, so none starves), then puts them all concurrently, in the background, so the
   fold never waits on KV; a put that fails makes its rollout pending again;
3. on start every rollout is pending (the last process may have died between its
   commit and its puts); on stop the running round is awaited and what is pending is
   put, a few rounds at most (the rest waits for the next start).

A put of a value already there is harmless, and KV is a cache: the log has the truth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from rollout_engine.consumers.projection import META
from rollout_engine.events import subjects

if TYPE_CHECKING:
    from rollout_engine.consumers.folding import BatchResult
    from rollout_engine.consumers.runtime import Runner

__all__ = ["KvMirror"]

log = logging.getLogger(__name__)

Observer = Callable[[str, bytes], None]


class KvMirror:
    """Mirror ``value_of(rollout)`` into KV ``<kind>.<rollout>`` under the rule above.

    ``rollouts()`` lists every rollout (for the first round after start); ``subject_of``
    also publishes each value on core NATS (the stats summaries on ``ro.stats.<rollout>``);
    ``observers`` are called with (rollout, value) after each successful put (the engine
    hangs its Prometheus gauges there).
    """

    def __init__(self, kind: str, value_of: Callable[[str], bytes], rollouts: Callable[[], Iterable[str]], *,
                 interval_s: float, budget_s: float = 0.04, subject_of: Callable[[str], str] | None = None) -> None:
        subjects.kv_filter(kind)  # an unknown kind fails here, not at the first put
        self.kind = kind
        self.value_of = value_of
        self.rollouts = rollouts
        self.interval_s = interval_s
        self.budget_s = budget_s
        self.subject_of = subject_of
        self.observers: list[Observer] = []
        self.pending: dict[str, None] = {}  # an ordered set
        self._last = float("-inf")
        self._round: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def touch(self, keys: Iterable[str]) -> None:
        """Make rollouts pending (the meta part is not a rollout)."""
        for key in keys:
            if key != META:
                self.pending.setdefault(key)

    async def on_start(self, runner: Runner) -> None:
        self.touch(sorted(self.rollouts()))
        self._maybe_start(runner, force=True)

    async def after_commit(self, runner: Runner, result: BatchResult) -> None:
        self.touch(result.parts)
        self._maybe_start(runner)

    async def on_stop(self, runner: Runner) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._round is not None:
            await self._round
        for _ in range(3):
            if not self.pending:
                return
            await self._put(runner, self._take(budget_s=float("inf")))

    def _maybe_start(self, runner: Runner, force: bool = False) -> None:
        now = time.monotonic()
        if not self.pending:
            return
        if self._round is not None and not self._round.done():
            self._later(runner, max(self.interval_s, 0.05))  # pending again after the running round
            return
        if not force and now - self._last < self.interval_s:
            self._later(runner, self.interval_s - (now - self._last))
            return
        self._last = now
        self._round = asyncio.create_task(self._put(runner, self._take(self.budget_s)))

    def _later(self, runner: Runner, delay_s: float) -> None:
        """Try again in ``delay_s`` (one timer at a time): pending values never wait for a next commit."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._fire, runner)

    def _fire(self, runner: Runner) -> None:
        self._timer = None
        self._maybe_start(runner)

    def _take(self, budget_s: float) -> list[tuple[str, bytes]]:
        """Values of pending rollouts, oldest first, computed for at most ``budget_s``."""
        deadline = time.perf_counter() + budget_s
        items: list[tuple[str, bytes]] = []
        while self.pending and (not items or time.perf_counter() < deadline):
            rollout = next(iter(self.pending))
            del self.pending[rollout]
            try:
                items.append((rollout, self.value_of(rollout)))
            except Exception:  # a value that cannot be made must not stop the others
                log.exception("%s value of %s could not be made; skipped", self.kind, rollout)
        return items

    async def _put(self, runner: Runner, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            kv: Any = await runner.kv()
        except Exception as exc:
            log.warning("KV %s not available (%s); %d %s values wait for the next round",
                        subjects.STATE_BUCKET, exc, len(items), self.kind)
            self.touch(rollout for rollout, _ in items)
            return
        if self.subject_of is not None:
            for rollout, value in items:
                try:
                    await runner.nc.publish(self.subject_of(rollout), value)
                except Exception as exc:  # core NATS is fire and forget: the KV put still counts
                    log.warning("%s of %s not published: %s", self.kind, rollout, exc)
        results = await asyncio.gather(*(kv.put(subjects.kv_key(self.kind, rollout), value) for rollout, value in items),
                                       return_exceptions=True)
        for (rollout, value), outcome in zip(items, results, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("%s of %s not stored in KV (kept for the next round): %s", self.kind, rollout, outcome)
                self.pending.setdefault(rollout)
                continue
            for observe in self.observers:
                try:
                    observe(rollout, value)
                except Exception:
                    log.exception("KV mirror observer failed for %s %s", self.kind, rollout)
