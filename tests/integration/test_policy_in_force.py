"""``status.thresholds`` is the live policy in force after any sequence of commands, on a real server."""

from __future__ import annotations

from rollout_engine.engine.api.client import call


async def test_thresholds_stay_the_policy_in_force_across_set_kill_and_resume(api, rollout_id) -> None:
    nc, _js = api
    policy = {"name": "shop", "thresholds": {"max_cost_cents": 4.5}, "last_n": 50}
    await call(nc, "config", {"rollout": rollout_id, "actor": "alice", "canary_pct": 5, "create": True,
                              "policy": policy})
    steps = [
        ("config", {"canary_pct": 10}),
        ("config", {"policy": {"name": "shadow", "dry_run": True, "thresholds": {"max_cost_cents": 1.0}}}),
        ("abort", {"reason": "looks wrong"}),
        ("resume", {"canary_pct": 5}),
        ("config", {"kill_switch": True, "reason": "again"}),
        ("retry", {}),
    ]
    for endpoint, body in steps:
        await call(nc, endpoint, {"rollout": rollout_id, "actor": "bob", **body})
        status = await call(nc, "status", {"rollout": rollout_id})
        thresholds = status["thresholds"]
        assert thresholds["name"] == "shop", (endpoint, body)
        assert thresholds["thresholds"]["max_cost_cents"] == 4.5 and thresholds["last_n"] == 50, (endpoint, body)
        assert thresholds["version"] == 1 and not thresholds["dry_run"], (endpoint, body)
