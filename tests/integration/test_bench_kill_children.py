"""The kill-path bench's figures come from ``rollout consumer rollback`` child processes
(bench/kill_children.py), as ``rollout up`` runs the consumer: this runs a few kills
through two of them over a partitioned log, on a real nats-server, so the driver of
``make bench``'s headline figure cannot rot between measurements."""

from __future__ import annotations

from bench.bench_rollback import kill_latency
from rollout_engine.events import subjects


async def test_two_partitioned_consumer_processes_kill_every_breach_they_own() -> None:
    result = await kill_latency(kills=4, background_eps=2_000, warmup_s=0.2, processes=2, kill_timeout_s=20.0,
                                budget_s=60.0)
    assert sorted(subjects.partition_of(f"kill-{k}", 2) for k in range(4)) == [0, 0, 1, 1]  # both processes kill
    assert (result["missed"], result["kills"]) == (0, 4)
    assert all(0.0 < sample < 20_000.0 for sample in result["samples_ms"])
    assert result["driver"] == "2 `rollout consumer rollback` process(es) over 2 partitions"
    assert result["folded_events"] == -1 and result["trace"] == {}  # a child is not traced from here
