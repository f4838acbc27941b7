"""The KV mirror: one publishing rule for every consumer that shows its state in KV.

Consumers whose state people, dashboards or SDKs read (control state, canary-stats
summaries, bandit views, rollback evaluations) mirror it, one key per rollout, into KV
``ro_state`` under ``<kind>.<rollout>`` (``events.subjects.kv_key``). The mirror is an
edge, not the reducer: it reads the wall clock to pace itself, never the fold.

The rule, the same for every consumer:

1. after each committed batch, every rollout whose snapshot part changed is *pending*
   (in first-touched order; a rollout already pending keeps its place), and that same
   SQLite transaction lists it in the store's ``unmirrored`` table (``consumers.unmirrored``);
2. a *round* starts when none is running and ``interval_s`` has passed since the last
   one started (0: after every commit); a commit that comes sooner sets a timer for the
   moment it may start, so a value reaches KV at most ``interval_s`` (plus the round's
   own time) after its commit, even when no further commit follows. It takes pending
   rollouts in order and computes their values for at most ``budget_s`` of wall clock
   (what is left goes first next round, so none starves), then puts them all
   concurrently, in the background, so the fold never waits on KV;
3. a put that fails makes its rollout pending again and leaves it listed; one that
   succeeded is taken off the list, unless a later commit changed the rollout, in one
   store transaction per ``CONFIRM_S`` at most, written between commits;
4. on start the pending rollouts are exactly the listed ones (longest waiting first):
   what the last process committed and did not see put (it died between a commit and
   its puts, KV refused, or its last ``CONFIRM_S`` of confirmations were not written).
   Nothing else is computed, so a restart after a clean stop puts nothing and loads no resting rollout;
   a store older than the list lists every rollout, once. On stop the running round is
   awaited, what is pending is put (a few rounds at most) and the confirmations are
   written; what is left stays listed for the next start.

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

CONFIRM_S = 1.0
"""Successful puts leave the store's list at most this often: one small transaction a
second however many rounds ran, and a crash costs at most this much of puts again."""


class KvMirror:
    """Mirror ``value_of(rollout)`` into KV ``<kind>.<rollout>`` under the rule above.

    The runner's store lists the rollouts KV may not have (rule 4); ``subject_of``
    also publishes each value on core NATS (the stats summaries on ``ro.stats.<rollout>``);
    ``observers`` are called with (rollout, value) after each successful put (the engine
    hangs its Prometheus gauges there).
    """

    def __init__(self, kind: str, value_of: Callable[[str], bytes], *, interval_s: float, budget_s: float = 0.04, subject_of: Callable[[str], str] | None = None) -> None:
        subjects.kv_filter(kind)  # an unknown kind fails here, not at the first put
        self.kind = kind
        self.value_of = value_of
        self.interval_s = interval_s
        self.budget_s = budget_s
        self.subject_of = subject_of
        self.observers: list[Observer] = []
        self.pending: dict[str, None] = {}  # an ordered set
        self.confirmed: dict[str, int] = {}  # put, still on the store's list: rollout -> position of its value
        self.puts = 0  # successful puts since this process started
        self._confirmed_at = float("-inf")
        self._last = float("-inf")
        self._round: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def touch(self, keys: Iterable[str]) -> None:
        """Make rollouts pending (the meta part is not a rollout)."""
        for key in keys:
            if key != META:
                self.pending.setdefault(key)

    async def on_start(self, runner: Runner) -> None:
        self.touch(await runner.store.unmirrored_rollouts())
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
                break
            await self._put(runner, *self._take(runner, budget_s=float("inf")))
        await self._confirm(runner, force=True)

    def _maybe_start(self, runner: Runner, force: bool = False) -> None:
        now = time.monotonic()
        running = self._round is not None and not self._round.done()
        if not self.pending:
            if self.confirmed and not running and now - self._confirmed_at >= CONFIRM_S:
                self._round = asyncio.create_task(self._confirm(runner))  # idle: write them now
            return
        if running:
            self._later(runner, max(self.interval_s, 0.05))  # pending again after the running round
            return
        if not force and now - self._last < self.interval_s:
            self._later(runner, self.interval_s - (now - self._last))
            return
        self._last = now
        self._round = asyncio.create_task(self._put(runner, *self._take(runner, self.budget_s)))

    def _later(self, runner: Runner, delay_s: float) -> None:
        """Try again in ``delay_s`` (one timer at a time): pending values never wait for a next commit."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._fire, runner)

    def _fire(self, runner: Runner) -> None:
        self._timer = None
        self._maybe_start(runner)

    def _take(self, runner: Runner, budget_s: float) -> tuple[list[tuple[str, bytes]], int]:
        """Values of pending rollouts, oldest first, computed for at most ``budget_s``, and the
        position they were made at (the fold's: every commit up to it is in them)."""
        deadline = time.perf_counter() + budget_s
        items: list[tuple[str, bytes]] = []
        while self.pending and (not items or time.perf_counter() < deadline):
            rollout = next(iter(self.pending))
            del self.pending[rollout]
            try:
                items.append((rollout, self.value_of(rollout)))
            except Exception:  # a value that cannot be made must not stop the others
                log.exception("%s value of %s could not be made; skipped", self.kind, rollout)
        return items, runner.folder.seq

    async def _put(self, runner: Runner, items: list[tuple[str, bytes]], seq: int) -> None:
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
            self.confirmed[rollout] = seq
            self.puts += 1
            for observe in self.observers:
                try:
                    observe(rollout, value)
                except Exception:
                    log.exception("KV mirror observer failed for %s %s", self.kind, rollout)
        await self._confirm(runner)

    async def _confirm(self, runner: Runner, force: bool = False) -> None:
        """Take what was put off the store's list, at most once per ``CONFIRM_S`` (unless
        ``force``). A store that refuses keeps them listed: the next start puts them again."""
        if not self.confirmed or (not force and time.monotonic() - self._confirmed_at < CONFIRM_S):
            return
        confirmed, self.confirmed = self.confirmed, {}
        self._confirmed_at = time.monotonic()
        try:
            await runner.store.confirm_mirrored(confirmed)
        except Exception as exc:
            log.warning("%s: %d %s puts not taken off the store's list (%s); the next start puts them again",
                        runner.name, len(confirmed), self.kind, exc)
