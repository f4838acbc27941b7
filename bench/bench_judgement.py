"""Judgement quality (``make bench`` group ``judgement``): false kills, power and time to
kill of the rollback policies, from the simulator (``rollout simulate``).

Every simulated rollout is folded by the rollback consumer's own projection and judged
after every event: 20 requests/s of the ``typical`` traffic (quality 90 sd 9, latency
p95 877 ms with a 2% slow tail, cost 2.0 cents sd 0.5) for 5 minutes of event time, at
10% and 50% canary splits. Figures:

* the recommended preset's A/A false-kill rate at each split, beside the canary split
  system's preset on the same traffic (same seeds, same requests) as the reference;
* the recommended preset's power: the share of candidates with quality -3 points, p95
  +10% or cost +20% killed within 500 candidate samples, and the median samples to kill;
* the canary split preset's kills of the same regressions at 50% (mostly by its latency
  guard's false alarms, not by the regressed metric: see ``kills_by_guard``);
* every statistical guard option alone (``OPTION_PROBES``: alpha 0.05, its threshold at
  "worse at all" so the test decides), on A/A traffic of its metric at a 50% split: its
  false-positive rate under continuous judging against its stated alpha; SRM likewise.

Rates are percentages with their Wilson 95% interval in the range column; medians with
their distribution-free 95% interval. The rollout counts keep the group near a minute on
two quiet cores; ``--docs`` runs the larger counts behind the tables of docs/rollback.md.

Run alone: ``.venv/bin/python -m bench.bench_judgement`` (``--docs`` for the doc tables).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

from bench.harness import Figure
from rollout_engine.consumers.rollback.policy import load_policy, policy_document
from rollout_engine.engine.logtools.profiles import PROFILES, REGRESSIONS, TrafficProfile
from rollout_engine.engine.logtools.simulate import OPTION_PROBES, Scenario, render, run_scenario

__all__ = ["docs_tables", "judgement", "judgement_figures"]

MINUTES = 5.0
BUDGET = 500
REGRESSION_NAMES = ("quality-3", "p95+10%", "cost+20%")


def _preset(name: str) -> dict[str, Any]:
    return policy_document(load_policy({"preset": name}))


def _run(policy: dict[str, Any], profile: TrafficProfile, split: float, regression: str, rollouts: int,
         name: str, seed: int = 1) -> dict[str, Any]:
    scenario = Scenario(policy, profile, split, REGRESSIONS[regression], rollouts=rollouts, minutes=MINUTES,
                        budget=BUDGET, seed=seed, policy_name=name)
    return run_scenario(scenario).to_dict()


def _rate_figure(name: str, result: dict[str, Any], key: str = "kill_rate", **meta: Any) -> Figure:
    ci = result["kill_rate_ci"] if key == "kill_rate" else result["within_budget_ci"]
    count = result["kills"] if key == "kill_rate" else result["killed_within_budget"]
    return Figure(name, "%", 100 * result[key], 100 * ci[0], 100 * ci[1], [count, result["rollouts"]],
                  note=f"{count} of {result['rollouts']} rollouts; Wilson 95% interval as the range", **meta)


def _median_figure(name: str, result: dict[str, Any]) -> Figure:
    def value(x: float | None) -> float:
        return math.inf if x is None else x

    lo, hi = result["median_candidates_ci"]
    return Figure(name, "samples", value(result["median_candidates_to_kill"]), value(lo), value(hi), [],
                  target=f"<= {BUDGET}", note=f"{result['median_seconds_to_kill']} s of event time; the 95% "
                  "interval of the median as the range")


def judgement_figures(aa_rollouts: int = 60, power_rollouts: int = 100, probe_rollouts: int = 40) -> list[Figure]:
    """The judgement-quality figures of ``make bench`` (see the module docstring)."""
    typical = PROFILES["typical"]
    recommended, canary = _preset("recommended"), _preset("canary-split")
    figures: list[Figure] = []
    for split in (10.0, 50.0):
        reference = _run(canary, typical, split, "none", aa_rollouts, "canary-split")
        aa = _run(recommended, typical, split, "none", aa_rollouts, "recommended")
        figures.append(_rate_figure(
            f"judgement: recommended preset, A/A false kills, {split:g}% split, {MINUTES:g} min", aa,
            target="<= 1%", reference=f"canary-split preset, same traffic ({reference['kills']}/{aa_rollouts})",
            reference_value=100 * reference["kill_rate"], extra={"result": aa, "reference": reference}))
    for regression in REGRESSION_NAMES:
        for split in (10.0, 50.0):
            power = _run(recommended, typical, split, regression, power_rollouts, "recommended")
            figures.append(_rate_figure(
                f"judgement: recommended preset, {regression} killed within {BUDGET} candidate samples, {split:g}%",
                power, key="within_budget_rate", target=">= 95%", extra={"result": power}))
            figures.append(_median_figure(
                f"judgement: recommended preset, {regression}, {split:g}%: median candidate samples to kill", power))
    for regression in REGRESSION_NAMES:  # the canary split preset on the same regressions, for comparison
        power = _run(canary, typical, 50.0, regression, probe_rollouts, "canary-split")
        figures.append(_rate_figure(
            f"judgement: canary-split preset, {regression} killed within {BUDGET} candidate samples, 50%", power,
            key="within_budget_rate", extra={"result": power, "kills_by_guard": power["kills_by_guard"]}))
    for name, probe in OPTION_PROBES.items():
        result = _run(probe.policy, typical.only(probe.metrics), 50.0, "none", probe_rollouts, name)
        figures.append(_rate_figure(f"judgement: {name}, A/A false positives, 50% split, {MINUTES:g} min", result,
                                    target=f"<= alpha {100 * probe.alpha:g}%", extra={"result": result}))
    return figures


async def judgement() -> list[Figure]:
    """``make bench`` group entry: the simulation runs in worker processes, off the loop."""
    return await asyncio.to_thread(judgement_figures)


def _option_row(name: str, alpha: float, aa: dict[str, Any], power: dict[str, Any] | None) -> str:
    lo, hi = aa["kill_rate_ci"]
    cells = [name, f"{alpha:g}", f"{aa['kills']}/{aa['rollouts']} = {100 * aa['kill_rate']:.1f}% "
             f"[{100 * lo:.1f}-{100 * hi:.1f}]"]
    if power is None:
        cells += ["-", "-"]
    else:
        plo, phi = power["within_budget_ci"]
        med = power["median_candidates_to_kill"]
        cells += [f"{power['candidate']}: {power['killed_within_budget']}/{power['rollouts']} "
                  f"[{100 * plo:.0f}-{100 * phi:.0f}%]",
                  "-" if med is None else f"{med:.0f} samples, {power['median_seconds_to_kill']:.0f} s"]
    return "| " + " | ".join(cells) + " |"


DOCS_RESULTS = Path(__file__).resolve().parent / "results" / "judgement-docs.json"


def docs_tables(aa_rollouts: int = 500, power_rollouts: int = 300, near_rollouts: int = 200, seed: int = 1,
                results: Path = DOCS_RESULTS) -> str:
    """The Markdown tables of docs/rollback.md: each preset at both splits (typical and
    near traffic), and each statistical option alone (A/A and its regression, 50%).

    Every row's full result is kept in ``results`` (JSON) as soon as it is measured, so
    an interrupted run resumes where it stopped and the tables can be checked."""
    typical, near = PROFILES["typical"], PROFILES["near"]
    done: dict[str, Any] = json.loads(results.read_text()) if results.exists() else {}

    def row(policy: dict[str, Any], profile: TrafficProfile, split: float, regression: str, n: int,
            name: str) -> dict[str, Any]:
        key = f"{name}|{profile.name}|{split:g}|{regression}|{n}|{seed}|{MINUTES:g}|{BUDGET}"
        if key not in done:
            started = time.perf_counter()
            done[key] = _run(policy, profile, split, regression, n, name, seed)
            results.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
            print(f"  {key}: {done[key]['kills']}/{n} ({time.perf_counter() - started:.0f} s)", flush=True)
        return dict(done[key])

    out: list[str] = []
    for preset in ("recommended", "canary-split"):
        policy = _preset(preset)
        rows = []
        for profile in (typical, near):
            for split in (10.0, 50.0):
                names = ("none", *REGRESSION_NAMES) if profile is typical else ("none",)
                for regression in names:
                    n = power_rollouts if regression != "none" else aa_rollouts if profile is typical else near_rollouts
                    result = row(policy, profile, split, regression, n, preset)
                    result["candidate"] = f"{result['candidate']} ({profile.name})"
                    rows.append(result)
        out.append(f"**`{preset}`**\n\n{render(rows, markdown=True)}")
    lines = ["| option (alone, threshold at \"worse at all\") | stated alpha | A/A false positives, 50% "
             "[95% CI] | killed within 500 candidate samples, 50% | median to kill |", "|---|---|---|---|---|"]
    for name, probe in OPTION_PROBES.items():
        traffic = typical.only(probe.metrics)
        aa = row(probe.policy, traffic, 50.0, "none", aa_rollouts, name)
        power = None if probe.regression is None else row(probe.policy, traffic, 50.0, probe.regression,
                                                           power_rollouts, name)
        lines.append(_option_row(name, probe.alpha, aa, power))
    out.append("**Each statistical option alone**\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true", help="the larger runs behind docs/rollback.md's tables")
    parser.add_argument("--aa", type=int, default=500, help="with --docs: A/A rollouts per row")
    parser.add_argument("--power", type=int, default=300, help="with --docs: regressed rollouts per row")
    parser.add_argument("--near", type=int, default=200, help="with --docs: A/A rollouts per row of near traffic")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.docs:
        print(docs_tables(args.aa, args.power, args.near))
    else:
        for figure in judgement_figures():
            reference = f"; reference {figure.reference}: {figure.reference_value:.1f}" if figure.reference else ""
            print(f"{figure.name}: {figure.median:.1f} {figure.unit} ({figure.low:.1f}-{figure.high:.1f}); "
                  f"target {figure.target}{reference}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
