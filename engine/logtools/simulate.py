"""Judgement simulator: false kills, power and time to kill of a rollback policy.

Each simulated rollout is a log: a ConfigChange carrying the policy and the canary
split, then requests drawn from a :class:`~engine.logtools.profiles.TrafficProfile`
(a Decision, an Outcome with its quality, a ``latency_ms`` and a ``cost_cents`` Metric
each, Poisson arrivals) with an engine tick every 250 ms of event time. The log is
folded by the rollback consumer's own projection through the engine's one fold
(``consumers.folding.fold_events``, every emitted command fed back as the live
consumer's come back through the log), so what is measured is exactly what the engine
would do, judging after every event.

A rollout ends at its first automatic action against the candidate (a kill switch or a
staged step down), at the horizon (``minutes`` of event time) or, when the candidate
regresses, once it has had ``budget`` samples. Per scenario:

* **kill rate** with a Wilson 95% interval: false kills when the candidate is healthy
  (A/A), power when it regresses;
* **killed within budget**: the share killed before the candidate's ``budget``-th sample;
* **time to kill**: the median candidate samples (and seconds) to the kill, unkilled
  rollouts counting as never, with a distribution-free 95% interval.

Rollout ``i`` of a split draws the same traffic whatever the policy (its random stream
is seeded by ``seed``, the split and ``i``), so two policies are compared on identical
requests. Rollouts are independent and spread over worker processes; the result does
not depend on how many.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from rollout_engine.consumers.folding import fold_events
from rollout_engine.consumers.rollback.projection import ACTOR, RollbackProjection
from rollout_engine.consumers.rollback.scenario import T0, policy_change
from rollout_engine.engine.logtools.profiles import Regression, TrafficProfile
from rollout_engine.events import ConfigChange, Decision, Event, KillSwitch, Metric, Outcome, Tick

__all__ = ["OPTION_PROBES", "Probe", "RolloutRun", "Scenario", "ScenarioResult", "median_interval", "run_rollout", "run_scenario",
           "wilson"]

_OFF = {"max_quality_drop": -1, "max_latency_p95_ms": -1, "max_cost_cents": -1}
_QUIET = {"thresholds": _OFF, "srm": {"enabled": False}}

@dataclass(frozen=True, slots=True)
class Probe:
    """One statistical option alone, at the default alpha, its threshold at "worse at
    all" (or at the true mean) so that only the test stands between noise and a kill."""

    policy: dict[str, Any]
    metrics: tuple[str, ...]
    """The metrics its traffic needs (a fold judging one metric pays for no other)."""
    alpha: float
    regression: str | None
    """The named regression it should catch (None: not a metric test)."""


def _probe_guard(**guard: Any) -> dict[str, Any]:
    return {**_QUIET, "guards": [{"name": "probe", **guard}]}


OPTION_PROBES: dict[str, Probe] = {
    "sequential, quality, last-100 threshold": Probe(
        _probe_guard(metric="quality", mode="decrease", threshold=0.0, test="sequential"),
        ("quality",), 0.05, "quality-3"),
    "sequential, latency mean (long tail), all samples": Probe(
        _probe_guard(metric="latency_ms", mode="increase", threshold=0.0, window="all", test="sequential"),
        ("latency_ms",), 0.05, "p95+10%"),
    "sequential, absolute: cost mean > its true mean": Probe(
        _probe_guard(metric="cost_cents", threshold=2.0, test="sequential"), ("cost_cents",), 0.05, "cost+20%"),
    "mann_whitney, latency p95 ratio, last-100 threshold": Probe(
        _probe_guard(metric="latency_ms", aggregate="p95", mode="ratio", threshold=1.0, test="mann_whitney",
                     min_effect=0.0), ("latency_ms",), 0.05, "p95+10%"),
    "srm, sequential (default)": Probe({"thresholds": _OFF}, (), 0.001, None),
    "srm, chi-squared alone (sequential = false)": Probe(
        {"thresholds": _OFF, "srm": {"sequential": False}}, (), 0.001, None),
}
"""The statistical options as the bench and docs/rollback.md measure them (typical traffic)."""


ROLLOUT = "sim"
TICK_MS = 250
Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Scenario:
    """One row of a simulation: a policy judging one kind of candidate at one split."""

    policy: dict[str, Any] | None
    profile: TrafficProfile
    split: float
    regression: Regression
    rollouts: int = 200
    minutes: float = 10.0
    budget: int = 500
    seed: int = 1
    policy_name: str = ""


@dataclass(frozen=True, slots=True)
class RolloutRun:
    """How one simulated rollout ended."""

    killed: bool
    candidates: int
    seconds: float
    guards: tuple[str, ...] = ()


def _policy_document(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The policy as the simulated rollout's log carries it, judged live (a dry-run
    policy would only emit would-kills: the simulator measures what it would do live)."""
    if policy is None:
        return None
    return {**policy, "dry_run": False}


def _requests(scenario: Scenario, rng: random.Random) -> Any:
    """Yield (time_ms, is_candidate, quality, latency, cost) per request, Poisson arrivals."""
    profile, share, regression = scenario.profile, scenario.split / 100.0, scenario.regression
    rate_per_ms = profile.rate_per_s / 1000.0
    t = float(T0)
    while True:
        t += rng.expovariate(rate_per_ms)
        candidate = rng.random() < share
        values = profile.draw(rng)
        if candidate and not regression.healthy:
            values = regression.apply(values)
        yield int(t), candidate, values


def run_rollout(scenario: Scenario, index: int) -> RolloutRun:
    """Fold one simulated rollout through the rollback projection; how it ended."""
    rng = random.Random(f"{scenario.seed}:{scenario.split}:{index}")
    projection = RollbackProjection()

    def apply(event: Event, seq: int) -> list[Event]:
        emitted, failed = fold_events(projection, (event,), seq)
        if failed:  # a simulation measures the fold: one that raises is a bug, not a data point
            raise RuntimeError(f"the rollback fold raised at seq {seq}: {failed[0].reason}")
        return emitted

    split = scenario.split
    horizon = T0 + int(scenario.minutes * 60_000)
    budget = scenario.budget if not scenario.regression.healthy else math.inf
    seq = 1
    start = policy_change(ROLLOUT, _policy_document(scenario.policy), canary_pct=split, time_ms=T0 - 1,
                          reason="simulation")
    for command in apply(start, seq):
        apply(command, seq)
    next_tick = T0 - T0 % TICK_MS + TICK_MS
    candidates = 0
    for i, (t, is_candidate, (quality, latency, cost)) in enumerate(_requests(scenario, rng)):
        if t >= horizon or candidates >= budget:
            break
        events: list[Event] = []
        while next_tick <= t:
            events.append(Tick(id=f"tick-{next_tick}", time_ms=next_tick, producer="engine"))
            next_tick += TICK_MS
        variant = "candidate" if is_candidate else "baseline"
        candidates += is_candidate
        did = f"d{i}"
        events.append(Decision(id=did, rollout=ROLLOUT, time_ms=t, producer="sim", unit=f"u{i}", variant=variant,
                               reason="canary" if is_candidate else "default", canary_pct=split,
                               config_version=1, propensity=split / 100.0 if is_candidate else 1 - split / 100.0))
        if quality is not None:
            events.append(Outcome(id=f"o{i}", rollout=ROLLOUT, time_ms=t, producer="sim", decision_id=did,
                                  variant=variant, verdict="neutral", quality=quality))
        if latency is not None:
            events.append(Metric(id=f"l{i}", rollout=ROLLOUT, time_ms=t, producer="sim", variant=variant,
                                 name="latency_ms", value=latency, decision_id=did))
        if cost is not None:
            events.append(Metric(id=f"c{i}", rollout=ROLLOUT, time_ms=t, producer="sim", variant=variant,
                                 name="cost_cents", value=cost, decision_id=did))
        for event in events:
            seq += 1
            for command in apply(event, seq):
                seq += 1
                apply(command, seq)
                verdict = _verdict(command)
                if verdict is not None:
                    return RolloutRun(True, candidates, (t - T0) / 1000.0, verdict)
    return RolloutRun(False, candidates, (min(horizon, t) - T0) / 1000.0)


def _verdict(command: Event) -> tuple[str, ...] | None:
    """The guards behind an automatic action against the candidate, or None."""
    if isinstance(command, KillSwitch):
        return tuple(sorted({b.guard for b in command.breaches})) or ("?",)
    if (isinstance(command, ConfigChange) and command.actor == ACTOR
            and command.after.canary_pct < command.before.canary_pct):
        return ("staged",)
    return None


def _run_chunk(job: tuple[Scenario, range]) -> list[RolloutRun]:
    scenario, indices = job
    return [run_rollout(scenario, i) for i in indices]


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _binom_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """Median with its distribution-free 95% interval (order statistics j..k such that
    P(j <= Binomial(n, 1/2) < k) >= 95%). Values may be ``inf`` (never killed)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.inf, math.inf, math.inf
    median = ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    j = 0
    while j + 1 < n and _binom_cdf(j, n) < 0.025:
        j += 1
    lo = ordered[max(0, j - 1)]
    hi = ordered[min(n - 1, n - j)]
    return median, lo, hi


@dataclass
class ScenarioResult:
    """The figures of one scenario."""

    scenario: Scenario
    runs: list[RolloutRun] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(r.killed for r in self.runs)

    @property
    def within_budget(self) -> int:
        return sum(r.killed and r.candidates <= self.scenario.budget for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        s, n = self.scenario, len(self.runs)
        rate_lo, rate_hi = wilson(self.kills, n)
        within_lo, within_hi = wilson(self.within_budget, n)
        samples = [float(r.candidates) if r.killed else math.inf for r in self.runs]
        seconds = [r.seconds if r.killed else math.inf for r in self.runs]
        med, med_lo, med_hi = median_interval(samples)
        guards = Counter(g for r in self.runs if r.killed for g in r.guards)

        def finite(x: float) -> float | None:
            return None if math.isinf(x) else x

        return {
            "policy": s.policy_name, "profile": s.profile.name, "split_pct": s.split,
            "candidate": "A/A" if s.regression.healthy else s.regression.name,
            "rollouts": n, "minutes": s.minutes, "budget": s.budget, "seed": s.seed,
            "kills": self.kills, "kill_rate": self.kills / n if n else 0.0, "kill_rate_ci": [rate_lo, rate_hi],
            "killed_within_budget": self.within_budget, "within_budget_rate": self.within_budget / n if n else 0.0,
            "within_budget_ci": [within_lo, within_hi],
            "median_candidates_to_kill": finite(med), "median_candidates_ci": [finite(med_lo), finite(med_hi)],
            "median_seconds_to_kill": finite(median_interval(seconds)[0]),
            "kills_by_guard": dict(sorted(guards.items())),
        }


def run_scenario(scenario: Scenario, workers: int | None = None) -> ScenarioResult:
    """Simulate ``scenario.rollouts`` rollouts (over ``workers`` processes; default: the
    CPUs, at most 2) and collect how each ended."""
    workers = workers or min(2, os.cpu_count() or 1)
    n = scenario.rollouts
    if workers <= 1 or n < 8:
        return ScenarioResult(scenario, _run_chunk((scenario, range(n))))
    step = math.ceil(n / (workers * 4))
    jobs = [(scenario, range(i, min(n, i + step))) for i in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        runs = [run for chunk in pool.map(_run_chunk, jobs) for run in chunk]
    return ScenarioResult(scenario, runs)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.9995 else "100%"


def _row(d: dict[str, Any]) -> list[str]:
    n = d["rollouts"]
    lo, hi = d["kill_rate_ci"]
    rate = f"{_pct(d['kill_rate'])} [{100 * lo:.1f}-{100 * hi:.1f}]"
    healthy = d["candidate"].startswith("A/A")
    within = "-" if healthy else f"{d['killed_within_budget']}/{n}"
    med = d["median_candidates_to_kill"]
    if med is None:  # fewer than half killed
        to_kill = "-" if healthy or d["kills"] == 0 else f"> {d['budget']} samples"
    else:
        mlo, mhi = d["median_candidates_ci"]
        hi_text = "never" if mhi is None else f"{mhi:.0f}"
        to_kill = f"{med:.0f} [{mlo:.0f}-{hi_text}], {d['median_seconds_to_kill']:.0f} s"
    guards = ", ".join(f"{g} {k}" for g, k in d["kills_by_guard"].items()) or "-"
    return [f"{d['split_pct']:g}%", d["candidate"], f"{d['kills']}/{n}", rate, within, to_kill, guards]


HEADERS = ["split", "candidate", "killed", "kill rate [95% CI]", "within budget",
           "median candidate samples to kill [95% CI], seconds", "kills by guard"]


def render(results: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """The results as a text table (or a Markdown one, for docs)."""
    rows = [_row(d) for d in results]
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [HEADERS, *rows])
