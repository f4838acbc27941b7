"""Evaluating a policy's guards for the rollback fold: full results, and the screened
per-sample judgement that settles plain passes without building results.

The rollback fold judges the guards on a sample's metric after every sample, and on
healthy traffic nearly every judgement is a plain ``pass`` of a guard whose machine is
``ok`` (and every decision's SRM check a clear fit). :func:`screened` settles those with :meth:`.evidence.StatsEvidence.passes`,
which reads the same incremental aggregates with the same arithmetic as
:func:`.guards.evaluate_guard`, and records on the machine exactly what
:func:`.hysteresis.step` would for that pass (``last``, the inconclusive count reset, no
signal), dropping a cached test as :func:`evaluated` would. Everything else goes
through :func:`evaluated` as before, so the commands and the snapshots are the same.
Profiled on the bench workload (py-spy): judging fell from 32% to 19% of the rollback fold.
"""

from __future__ import annotations

from rollout_engine.consumers.rollback.evidence import StatsEvidence
from rollout_engine.consumers.rollback.guards import (
    SRM_GUARD,
    GuardIndex,
    GuardPlan,
    GuardResult,
    evaluate_guard,
    evaluate_srm,
)
from rollout_engine.consumers.rollback.policy import Guard
from rollout_engine.consumers.rollback.state import CachedTest, PolicyRun, RolloutState
from rollout_engine.consumers.rollback.stats_tests import srm_clearly_fits, srm_room

__all__ = ["SrmRoom", "evaluated", "results", "screened", "srm_settled"]

SrmRoom = tuple[tuple[float, float, int], int, int, int]
"""What :func:`srm_settled` keeps per rollout: ((canary %, p-value, minimum decisions),
baseline and candidate counts when it was measured, the total it reaches clear of them)."""


def evaluated(r: RolloutState, run: PolicyRun, guard: Guard, evidence: StatsEvidence,
              variants: tuple[str, str], penalized: bool) -> GuardResult:
    """One guard's full evaluation, its statistical test re-run at most once per check
    interval (``run.tests`` keeps the last one; a pass drops it)."""
    now, tests = r.now_ms, run.tests
    cached = tests.get(guard.name)
    interval = run.policy.hysteresis.check_interval_ms
    prior = cached.result if cached is not None and now - cached.at_ms < interval else None
    result = evaluate_guard(guard, run.policy, evidence, variants, penalized=penalized, cached=prior)
    if result.test is not None and result.test is not prior:
        tests[guard.name] = CachedTest(now, result.test)
    elif result.status == "pass" and cached is not None:
        del tests[guard.name]
    return result


def results(index: GuardIndex, r: RolloutState, run: PolicyRun, evidence: StatsEvidence,
            variants: tuple[str, str], only: str | None, relative_only: bool = False,
            screen: bool = False) -> list[GuardResult]:
    """Evaluate the guards of ``run`` (those on metric ``only``, or all; ``"srm"``: the
    SRM check alone). ``screen``: only the statuses are read (a clear SRM pass skips its
    p-value). What an action reports: every result, with its numbers."""
    out: list[GuardResult] = []
    if only != "srm":
        machines = run.machines
        for guard in index.on(run.policy, only, relative_only):
            machine = machines.get(guard.name)
            out.append(evaluated(r, run, guard, evidence, variants,
                                 machine is not None and machine.penalized(r.now_ms)))
    srm = run.policy.srm
    if (only is None or only == "srm") and srm.enabled and r.srm_pct > 0:
        out.append(evaluate_srm(srm, r.srm_baseline, r.srm_candidate, r.srm_pct, screen))
    return out


def screened(index: GuardIndex, r: RolloutState, run: PolicyRun, evidence: StatsEvidence,
             variants: tuple[str, str], only: str | None, relative_only: bool = False,
             plans: list[GuardPlan] | None = None) -> list[GuardResult]:
    """:func:`results` with ``screen``, less the plain passes of guards whose machine is
    ``ok`` and not short of samples: those are settled here (see the module docstring).
    ``plans``: ``index.plans(run.policy, only, relative_only)`` when the caller already
    looked them up (the fold does, to skip a sample no guard reads).

    Guards are evaluated in policy order and the settled ones leave no signal, so the
    caller steps the remaining machines in the same order as before; an evaluation reads
    only its own guard's machine, so settling some first changes nothing for the rest."""
    policy, now = run.policy, r.now_ms
    out: list[GuardResult] = []
    machines = run.machines
    if only != "srm":
        tests = run.tests
        for plan in index.plans(policy, only, relative_only) if plans is None else plans:
            machine = machines.get(plan.name)
            penalized = machine is not None and now < machine.penalty_until_ms
            if machine is not None and machine.state == "ok" and not machine.need \
                    and evidence.passes(plan, variants, penalized):
                machine.last = "pass"
                machine.inconclusive = 0
                if tests and plan.name in tests:
                    del tests[plan.name]
                continue
            out.append(evaluated(r, run, plan.guard, evidence, variants, penalized))
    srm = policy.srm
    if (only is None or only == "srm") and srm.enabled and r.srm_pct > 0:
        machine = machines.get(SRM_GUARD.name)
        b, c = r.srm_baseline, r.srm_candidate
        if machine is not None and machine.state == "ok" and not machine.need and b + c >= srm.min_decisions \
                and srm_clearly_fits(b, c, r.srm_pct, srm.p_value):  # evaluate_srm's screened pass
            machine.last = "pass"
            machine.inconclusive = 0
        else:
            out.append(evaluate_srm(srm, b, c, r.srm_pct, True))
    return out


def srm_settled(rooms: dict[str, SrmRoom], rollout: str, r: RolloutState, run: PolicyRun) -> bool:
    """True when the decision just counted leaves the SRM guard's machine as it is, so
    judging it (:func:`screened`) would change nothing; ``rooms`` keeps what was measured.

    That holds while the machine is ``ok`` and its last judgement a plain pass, and the
    counts are among those :func:`.stats_tests.srm_room` found certain to clearly fit: at
    least the counts it measured, at most its room more in all. A clear fit depends on the
    counts alone, so how they got there (a reset by a new split or epoch included) does
    not matter. ``rooms`` is derived, never stored: dropped, it is measured again.
    Profiled on the bench workload: the screen of every decision was ~10% of the fold."""
    srm = run.policy.srm
    if not srm.enabled or r.srm_pct <= 0:
        return False
    machine = run.machines.get(SRM_GUARD.name)
    if machine is None or machine.state != "ok" or machine.need or machine.last != "pass" or machine.inconclusive:
        return False
    b, c = r.srm_baseline, r.srm_candidate
    key = (r.srm_pct, srm.p_value, srm.min_decisions)
    room = rooms.get(rollout)
    if room is not None and room[0] == key and b >= room[1] and c >= room[2] and b + c <= room[3]:
        return True
    if b + c < srm.min_decisions:
        return False
    more = srm_room(b, c, r.srm_pct, srm.p_value)
    if more < 0:
        return False
    rooms[rollout] = (key, b, c, b + c + more)
    return True
