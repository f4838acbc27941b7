"""A service in a rollout: assign, shadow-compare, record outcomes and metrics."""

import asyncio
import collections
import time

from rollout_engine.engine.sdk import RolloutClient


async def plan_v1(): return {"agent": "triage", "steps": ["read", "label"], "tools": ["mail"], "dry_run": False}
async def plan_v2(): return {"agent": "triage", "steps": ["read", "label", "reply"], "tools": ["mail"], "dry_run": False}


async def main() -> None:
    served = collections.Counter()
    async with RolloutClient(producer="example") as client:  # settings: rollout.toml, ROLLOUT_*, `rollout up`
        for i in range(1000):
            start = time.perf_counter()
            decision = client.decide("planner-v2", f"user-{i}")  # sticky, no network round trip
            plan = await (plan_v2() if decision.reason == "canary" else plan_v1())
            await client.record_metric("planner-v2", decision.variant, "latency_ms",
                                       (time.perf_counter() - start) * 1000, unit="ms", decision_id=decision.id)
            await client.record_outcome("planner-v2", decision.id, decision.variant, "win" if plan else "loss")
            served[decision.reason] += 1
        await client.shadow("planner-v2", "user-0", baseline=plan_v1, candidate=plan_v2)  # both run, diff recorded
    print(f"served 1000 requests: {dict(served)}")


asyncio.run(main())
