"""The rollback consumer: a pure fold of the log that emits kill switches.

It reads the one totally ordered log (producer events, control commands, ticks),
folds producer events into its own canary-stats instance per rollout, and judges each
rollout with its policy on every relevant event and on every tick:

1. guards (:mod:`.guards`) -> pass / hold / fail / inconclusive with the numbers;
2. per-guard hysteresis (:mod:`.hysteresis`) -> a conclusive alarm, a recovery, or an
   inconclusive limit;
3. actions (:mod:`.actions`): a :class:`events.KillSwitch` (or a staged step down, :mod:`.progression`),
   a :class:`events.WouldKill` for a dry-run policy, an :class:`events.Escalation` for
   repeated breaches (:mod:`.escalation`), a step up when progression is on.

Every decision depends only on events: times are event times, commands take their ids
from the event that caused them (``command_id("kill", rollout, cause_id)``), and
snapshots are canonical, so replaying a log reproduces the same commands byte for byte.
The statistical tests run only when a threshold is crossed and then at most once per
``check_interval_ms``, so healthy traffic costs a few dictionary lookups per event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from rollout_engine.consumers.projection import RolloutProjection
from rollout_engine.consumers.rollback import evidence
from rollout_engine.consumers.rollback.actions import act, progress, would_kill_now
from rollout_engine.consumers.rollback.commands import ACTOR, escalation
from rollout_engine.consumers.rollback.evidence import SMALL_TIME_CAP, StatsEvidence, stats_shape
from rollout_engine.consumers.rollback.guards import GuardIndex, GuardResult
from rollout_engine.consumers.rollback.hysteresis import GuardMachine, step
from rollout_engine.consumers.rollback.judging import SrmRoom, results, screened, srm_settled
from rollout_engine.consumers.rollback.policy import (
    QUALITY,
    Policy,
    PolicyError,
    load_policy,
)
from rollout_engine.consumers.rollback.progression import Progress
from rollout_engine.consumers.rollback.state import (
    PolicyRun,
    RolloutState,
    at_rest,
    fresh_run,
    needs_tick,
    noted,
    rollout_status,
)
from rollout_engine.events import (
    COMMAND_TYPES,
    PRODUCER_TYPES,
    AnyEvent,
    ConfigChange,
    Decision,
    Escalation,
    Event,
    KillSwitch,
    Metric,
    Outcome,
    Resume,
    Tick,
)

__all__ = ["ACTOR", "RollbackProjection"]


class _Part(msgspec.Struct, array_like=True):
    """One rollout's part of the snapshot: its state and its canary-stats fold."""

    state: RolloutState
    stats: bytes
    shadow_stats: bytes = b""  # a dry-run policy's own fold (RolloutState.shadow_shape), else empty


_encoder = msgspec.msgpack.Encoder(order="sorted")
_clock_decoder = msgspec.msgpack.Decoder(int)
_part_decoder = msgspec.msgpack.Decoder(_Part)
_SETTLED: tuple[bool, Sequence[GuardResult]] = (False, ())  # what _step returns for no pending result


class RollbackProjection(RolloutProjection[RolloutState]):
    """Regression guards with statistics, hysteresis and dry-run; emits kill switches.

    One snapshot part per rollout (its state and its canary-stats fold); the meta part
    is the last engine tick, stored once the first tick arrived.
    """

    name = "rollback"
    resting = staticmethod(at_rest)  # consumers.resident: what a tick passes over rests out of memory
    beside = ("_stats", "_shadow_stats", "_evidence", "_srm_rooms")
    separable = True  # a rollout's judgement reads its own windows and clock (r.now_ms) and the ticks

    def __init__(self, stats_factory: Callable[[Sequence[int]], Any] | None = None) -> None:
        """``stats_factory(shape)`` makes one rollout's canary-stats fold (``evidence.stats_shape``)."""
        super().__init__()
        self._new_stats = stats_factory or evidence.new_stats
        self._stats: dict[str, Any] = {}
        self._shadow_stats: dict[str, Any] = {}  # a dry-run policy's own fold when it reads other windows
        self._evidence: dict[str, StatsEvidence] = {}  # the view over ``_stats``, made once per fold, not per event
        self._srm_rooms: dict[str, SrmRoom] = {}  # derived: how many decisions the split may take unjudged
        self._index = GuardIndex()

    @property
    def tick_ms(self) -> int:
        """The last engine tick: producer time may run at most a minute past it (consumers/eventtime.py)."""
        return self.clock.last_tick_ms

    # --- the fold ---------------------------------------------------------------------
    def apply(self, event: AnyEvent, seq: int) -> list[Event]:
        out: list[Event] = []
        cls = type(event)
        if cls is Metric or cls is Outcome or cls is Decision:  # the producer types, by identity (hot): first
            rollout = event.rollout  # type: ignore[union-attr]
            r = self.rollouts.get(rollout) or self._rollout(rollout)
            self._dirty.add(rollout)
            self._stats[rollout].sample(event, cls, seq)
            if r.shadow_shape:
                self._shadow_stats[rollout].sample(event, cls, seq)
            if cls is Metric:
                self._evaluate(rollout, r, event, out, event.name, event.variant)  # type: ignore[union-attr]
            elif cls is Decision:
                self._count_decision(r, event)  # type: ignore[arg-type]
                self._evaluate(rollout, r, event, out, "srm")
            elif event.quality is not None:  # type: ignore[union-attr]
                self._evaluate(rollout, r, event, out, QUALITY, event.variant)  # type: ignore[union-attr]
        elif isinstance(event, Tick):
            self._tick(event, seq, out)
        elif isinstance(event, PRODUCER_TYPES):  # pragma: no cover - a subclass of a producer type
            raise TypeError(f"unexpected producer event type {cls.__name__}")
        elif isinstance(event, COMMAND_TYPES):
            r = self._rollout(event.rollout)
            self._control(r, event)  # type: ignore[arg-type]
            self._dirty.add(event.rollout)
            if r.escalation.armed and isinstance(event, ConfigChange) and not event.after.kill_switch \
                    and event.after.canary_pct > event.before.canary_pct:  # the fix promoted: the loop ends
                why = f"cleared: candidate promoted to {event.after.canary_pct:g}% by {event.actor}"
                out += [self._escalation(event.rollout, r, f.trigger, "expired", f.count, r.now_ms, why, event.id,
                                         r.now_ms) for f in r.escalation.clear()]
        elif isinstance(event, Escalation) and event.actor != ACTOR and event.state == "expired":
            r = self.rollouts.get(event.rollout)  # an operator cleared the flag by hand, with a reason
            if r is not None and r.escalation.clear(event.trigger):
                self._dirty.add(event.rollout)
        return out

    def _tick(self, event: Tick, seq: int, out: list[Event]) -> None:
        """An engine tick: moves the time windows and re-judges every rollout it can change."""
        self.tick(event.time_ms)
        for rollout in sorted(self.rollouts):
            r = self.rollouts[rollout]
            if r.shadow_shape and r.shadow_shape[2] > SMALL_TIME_CAP:
                self._shadow_stats[rollout].apply(event, seq)
            if r.shape[2] > SMALL_TIME_CAP:  # the time window moves with ticks
                self._stats[rollout].apply(event, seq)
            elif not needs_tick(r):
                continue
            self._dirty.add(rollout)
            self._evaluate(rollout, r, event, out)

    # --- parts (the projection contract) -----------------------------------------------
    def encode_meta(self) -> bytes | None:
        return _encoder.encode(self.tick_ms) if self.tick_ms else None

    def decode_meta(self, blob: bytes) -> None:
        self.clock.last_tick_ms = _clock_decoder.decode(blob)

    def encode_rollout(self, rollout: str) -> bytes:
        shadow = self._shadow_stats.get(rollout)
        return _encoder.encode(_Part(self.rollouts[rollout], self._stats[rollout].snapshot(),
                                     b"" if shadow is None else shadow.snapshot()))

    def decode_rollout(self, rollout: str, blob: bytes) -> RolloutState:
        part = _part_decoder.decode(blob)
        stats = self._new_stats(tuple(part.state.shape))
        stats.restore(part.stats)
        self._live_fold(rollout, stats)
        self._shadow_stats.pop(rollout, None)
        if part.state.shadow_shape:
            shadow = self._shadow_stats[rollout] = self._new_stats(tuple(part.state.shadow_shape))
            shadow.restore(part.shadow_stats)
        return part.state

    def clear(self) -> None:
        super().clear()
        self._stats, self._shadow_stats, self._evidence, self._srm_rooms = {}, {}, {}, {}

    # --- reads ------------------------------------------------------------------------
    def status(self, rollout: str) -> dict[str, Any]:
        """Where a rollout stands, as plain data (the API's ``evaluation``, dashboards)."""
        r = self.rollouts.get(rollout)
        return {} if r is None else rollout_status(rollout, r)

    # --- folding ----------------------------------------------------------------------
    def _rollout(self, rollout: str) -> RolloutState:
        r = self.rollouts.get(rollout)
        if r is None:
            r = self.rollouts[rollout] = RolloutState()
            r.shape = list(stats_shape(r.live.policy))
            self._live_fold(rollout, self._new_stats(tuple(r.shape)))
        return r

    def _live_fold(self, rollout: str, stats: Any) -> None:
        """``stats`` becomes the rollout's live evidence: the fold, and the one view the
        guards read it through (an object made per judged sample cost ~0.3 us)."""
        self._stats[rollout] = stats
        self._evidence[rollout] = StatsEvidence(stats, rollout)

    def _new_epoch(self, rollout: str, r: RolloutState) -> None:
        """Forget the evidence: a re-enabled candidate is judged on new data only."""
        r.epoch += 1
        r.live = fresh_run(r.live, r.now_ms)
        r.shadow = None if r.shadow is None else fresh_run(r.shadow, r.now_ms)
        r.recovered_ms = -1
        r.srm_pct, r.srm_baseline, r.srm_candidate, r.candidate_total = -1.0, 0, 0, 0
        r.progress = Progress()
        r.shape = list(stats_shape(r.live.policy))
        self._live_fold(rollout, self._new_stats(tuple(r.shape)))
        self._shadow_fold(rollout, r)

    def _shadow_fold(self, rollout: str, r: RolloutState) -> None:
        """A dry-run policy reading other windows than the live one gets a fold of its own
        (empty from here on); one reading the same windows reads the live fold."""
        shape = [] if r.shadow is None else list(stats_shape(r.shadow.policy))
        r.shadow_shape = [] if not shape or evidence.serves(r.shape, shape) else shape
        if r.shadow_shape:
            self._shadow_stats[rollout] = self._new_stats(tuple(r.shadow_shape))
        else:
            self._shadow_stats.pop(rollout, None)

    def _count_decision(self, r: RolloutState, event: Decision) -> None:
        if event.variant == r.control.candidate:
            r.candidate_total += 1
        if event.reason not in ("default", "canary"):
            return
        if event.canary_pct != r.srm_pct:
            r.srm_pct, r.srm_baseline, r.srm_candidate = event.canary_pct, 0, 0
        if event.variant == r.control.candidate:
            r.srm_candidate += 1
        elif event.variant == r.control.baseline:
            r.srm_baseline += 1

    def _control(self, r: RolloutState, event: KillSwitch | Resume | ConfigChange) -> None:
        r.now_ms = max(r.now_ms, self.clock.bound(event.time_ms))
        if isinstance(event, ConfigChange) and event.policy is not None:
            try:
                policy = load_policy(event.policy, version=event.after.policy_version)
            except PolicyError as exc:  # bad input never stops the engine: keep the last good policy
                r.policy_error = str(exc)[:500]
            else:
                r.policy_error = ""
                if policy.dry_run:
                    r.shadow = PolicyRun(policy)
                    if not evidence.serves(r.shadow_shape or r.shape, stats_shape(policy)):
                        self._shadow_fold(event.rollout, r)
                else:
                    r.live = PolicyRun(policy)
                    if not evidence.serves(r.shape, stats_shape(policy)):  # other windows: the evidence starts again
                        self._new_epoch(event.rollout, r)
        was_killed = r.control.kill_switch
        if event.after.canary_pct != r.control.canary_pct or event.after.paused != r.control.paused:
            r.progress = Progress()  # a move or an unpause starts a fresh interval
        r.control = event.after
        if was_killed and not event.after.kill_switch:
            self._new_epoch(event.rollout, r)
        elif event.after.kill_switch and not was_killed:
            r.killed_ms = r.now_ms

    # --- judging ----------------------------------------------------------------------
    def _judges(self, policy: Policy, only: str, relative_only: bool, r: RolloutState) -> bool:
        """Whether :func:`.judging.results` would evaluate anything for a sample of metric ``only``.

        Profiled (bench workload, default policy): 43% of producer events are samples no
        guard reads (``error`` metrics; baseline samples of absolute guards), and each
        paid ~1 us of judging that could not change anything. Skipping them is exact:
        with no results, no machine steps and no command or flag is emitted.
        """
        if only == "srm":
            return policy.srm.enabled and r.srm_pct > 0
        return bool(self._index.plans(policy, only, relative_only))

    def _evaluate(self, rollout: str, r: RolloutState, cause: Event, out: list[Event], only: str | None = None,
                  variant: str | None = None) -> None:
        """Judge ``rollout`` (its state ``r``) after ``cause``.

        ``only`` limits the guards to one metric's and ``variant`` says whose sample
        arrived: a baseline sample cannot change an absolute (candidate-only) guard, so
        those are left to the next candidate sample or tick. Ticks judge everything.
        """
        now = self.clock.bound(cause.time_ms)
        if now > r.now_ms:
            r.now_ms = now
        else:
            now = r.now_ms
        if r.escalation.armed:
            for flag in r.escalation.expire(now):
                out.append(self._escalation(rollout, r, flag.trigger, "expired", flag.count, flag.expires_ms,
                                            f"{flag.trigger} escalation expired", cause.id, now))
        live = r.live
        candidate_only = variant is not None and variant != r.control.candidate
        if r.control.kill_switch:  # judged on for status and recovery; no command, no flag while killed
            if only is None or self._judges(live.policy, only, candidate_only, r):
                self._judge(rollout, r, live, self._evidence[rollout],
                            (r.control.baseline, r.control.candidate), cause, None, only, candidate_only)
            return
        # only this sample's guards can move: no dry run, no staged rollback, no progression
        alone = only is not None and r.shadow is None and live.last_step_ms < 0 and not live.policy.progression.enabled
        if alone and only == "srm" and srm_settled(self._srm_rooms, rollout, r, live):
            return  # the split certainly still fits and its machine is ok: judging would change nothing
        # the guards this sample can move, looked up once for the skip below and the screen
        plans = None if only is None or only == "srm" else self._index.plans(live.policy, only, candidate_only)
        if alone and not (plans if plans is not None else self._judges(live.policy, only, candidate_only, r)):
            return  # no guard reads this sample and nothing else moves: judging would change nothing
        evidence = self._evidence[rollout]
        variants = (r.control.baseline, r.control.candidate)
        flags: list[Event] = []  # escalations follow the action that caused them
        pending = screened(self._index, r, live, evidence, variants, only, candidate_only, plans)
        alarmed, failing = self._step(rollout, r, live, pending, cause, flags) if pending else _SETTLED
        staged = live.last_step_ms >= 0
        if alarmed or (failing and staged and self._step_due(r, now)):
            everything = noted(live, results(self._index, r, live, evidence, variants, None))
            out.append(act(rollout, r, everything, cause, now, evidence))
        elif staged or live.policy.progression.enabled:
            unhealthy = bool(failing) or any(m.state != "ok" for m in live.machines.values())
            if staged and not unhealthy:
                live.last_step_ms = -1  # recovered: a staged rollback stops where it is
            elif live.policy.progression.enabled:
                progress(rollout, r, unhealthy, cause, out, now)
        out.extend(flags)
        shadow = r.shadow
        if shadow is not None and r.shadow_shape:
            evidence = StatsEvidence(self._shadow_stats[rollout], rollout)
        if shadow is not None and shadow.tripped_ms < 0 and self._judge(
            rollout, r, shadow, evidence, variants, cause, out, only, candidate_only
        )[0]:
            everything = noted(shadow, results(self._index, r, shadow, evidence, variants, None))
            out.append(would_kill_now(rollout, r, everything, cause, now))

    def _judge(self, rollout: str, r: RolloutState, run: PolicyRun, evidence: StatsEvidence,
               variants: tuple[str, str], cause: Event, out: list[Event] | None, only: str | None,
               relative_only: bool = False) -> tuple[bool, Sequence[GuardResult]]:
        """:meth:`_step` on the guards of ``run`` that :func:`.judging.screened` did not settle."""
        return self._step(rollout, r, run, screened(self._index, r, run, evidence, variants, only, relative_only),
                          cause, out)

    def _step(self, rollout: str, r: RolloutState, run: PolicyRun, pending: list[GuardResult], cause: Event,
              out: list[Event] | None) -> tuple[bool, Sequence[GuardResult]]:
        """Step the machines of the ``pending`` results; return (a new alarm?, failing results).

        ``out`` None: the rollout is killed; machines step (status, recovery, flap
        history) but no flag is recorded or emitted. Guards that plainly pass with their
        machine ``ok`` were settled in :func:`.judging.screened` and are not seen here
        (when it settles all, the fold does not call this: :data:`_SETTLED`)."""
        policy, now, live = run.policy, r.now_ms, run is r.live
        cfg = policy.hysteresis
        alarmed = False
        failing: list[GuardResult] = []
        for result in pending:
            name = result.guard.name
            machine = run.machines.get(name)
            if machine is None:
                machine = run.machines[name] = GuardMachine()
            machine.last = result.status
            if result.need or machine.need:  # short of samples (status shows n/need): rare once warmed up
                machine.n, machine.need = result.have, result.need
            signal = step(machine, result.status, now, cfg)
            if out is None:
                if signal == "recovered" and all(m.state == "ok" for m in run.machines.values()):
                    r.recovered_ms = now
                elif signal == "alarm":
                    r.recovered_ms = -1
            elif signal == "alarm":
                alarmed = True
                if live:
                    flag = r.escalation.record(name, now, policy.escalation)
                    if flag is not None:
                        out.append(self._escalation(rollout, r, name, "armed", flag.count, flag.expires_ms,
                                                    f"{name} breached {flag.count} times within "
                                                    f"{policy.escalation.window_ms // 3_600_000}h", cause.id, now))
            elif signal == "inconclusive_limit" and live and out is not None:
                out.append(self._escalation(rollout, r, f"inconclusive-{name}"[:64], "armed", machine.inconclusive,
                                            now + policy.escalation.ttl_ms,
                                            f"{name} inconclusive for {machine.inconclusive} consecutive checks"
                                            f" ({result.why})", cause.id, now))
            if result.status == "fail":
                failing.append(result)
        return alarmed, failing

    def _step_due(self, r: RolloutState, now: int) -> bool:
        """A staged rollback under way takes its next step every hold_down_ms."""
        return r.live.last_step_ms >= 0 and now - r.live.last_step_ms >= r.live.policy.hysteresis.hold_down_ms

    def _escalation(self, rollout: str, r: RolloutState, trigger: str, state: str, count: int,
                    expires_ms: int, reason: str, cause_id: str, now: int) -> Escalation:
        return escalation(rollout, trigger, state, count, expires_ms, reason, cause_id, now, r.live.policy.version)
