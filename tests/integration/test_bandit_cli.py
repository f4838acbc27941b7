"""``rollout ope`` and ``rollout bandit`` as an operator runs them, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from rollout_engine.consumers.bandit.consumer import build as build_bandit
from rollout_engine.engine.stack.consumer_runner import consumer_runner
from rollout_engine.events import Decision, Outcome, encode_batch, subjects

T0 = 1_700_000_000_000
R = "bandit-cli"




def rollout(settings: object, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "ROLLOUT_ACTOR": "tester"}
    return subprocess.run(
        [sys.executable, "-m", "rollout_engine.engine.cli", "--nats-url", settings.nats_url, "--data-dir", settings.data_dir, *args],  # type: ignore[attr-defined]
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


async def test_rollout_ope_estimates_a_candidate_on_the_logged_traffic(stack) -> None:  # type: ignore[no-untyped-def]
    settings, _, js = stack
    rng = np.random.default_rng(21)
    logging_p, true_p = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.9])
    arms = rng.choice(3, size=3000, p=logging_p)
    decisions, outcomes = [], []
    for i, a in enumerate(arms):
        decisions.append(Decision(id=f"d{i}", rollout=R, time_ms=T0 + i, producer="svc", unit=f"u{i}",
                                  variant="abc"[a], reason="bandit", canary_pct=0, config_version=0,
                                  propensity=float(logging_p[a])))
        outcomes.append(Outcome(id=f"o{i}", rollout=R, time_ms=T0 + i, producer="svc", decision_id=f"d{i}",
                                variant="abc"[a], verdict="win" if rng.random() < true_p[a] else "loss"))
    for kind, events in (("decision", decisions), ("outcome", outcomes)):
        for start in range(0, len(events), 500):
            await js.publish_async(subjects.event(R, kind), encode_batch(events[start:start + 500]))
    await js.publish_async_completed()
    done = rollout(settings, "ope", R, "--policy", "a=0.1,b=0.1,c=0.8", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    truth = 0.1 * 0.2 + 0.1 * 0.5 + 0.8 * 0.9
    assert result["n"] == 3000 and result["missing_outcomes"] == 0
    assert result["ips_low"] <= truth <= result["ips_high"]
    assert result["snips_low"] <= truth <= result["snips_high"]
    text = rollout(settings, "ope", R, "--policy", "a=0.5,b=0.6")
    assert text.returncode == 2 and "sum to 1.1" in text.stderr


async def test_rollout_bandit_config_guardrail_and_show(stack) -> None:  # type: ignore[no-untyped-def]
    settings, nc, _ = stack
    done = rollout(settings, "bandit", "config", R, "--arms", "a,b", "--floor", "0.1", "--max-attempts", "2")
    assert done.returncode == 0, done.stderr
    await consumer_runner(build_bandit(settings), settings, nc=nc, until_idle=True, fetch_timeout=0.1).run()
    shown = json.loads(rollout(settings, "bandit", "show", R, "--json").stdout)
    assert shown["arms"] == ["a", "b"] and shown["enabled"] is True
    off = rollout(settings, "bandit", "guardrail", R, "--bandit", "off", "--max-per-hour", "2", "--reason", "incident-7")
    assert off.returncode == 0, off.stderr
    await consumer_runner(build_bandit(settings), settings, nc=nc, until_idle=True, fetch_timeout=0.1).run()
    shown = json.loads(rollout(settings, "bandit", "show", R, "--json").stdout)
    assert shown["enabled"] is False and shown["weights"][""] == [1.0, 0.0]
    assert shown["guardrail"]["normal_max_per_hour"] == 2
    bad = rollout(settings, "bandit", "config", R, "--arms", "a,a")
    assert bad.returncode == 2 and "unique" in bad.stderr
