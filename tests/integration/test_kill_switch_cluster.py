"""The kill path on ``rollout up --secure --cluster 3 --partitions 2``: a node killed with
SIGKILL under a regression is reaped and restarted (it rejoins), the regression is still
killed exactly once, and ``rollout status`` shows the cluster: nodes, stream leaders,
partitions and their owners. Secure mode, clustering and partitions together.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout_engine.events import subjects
from tests.integration.securestack import (
    SecureStack,
    child_status,
    cli,
    regression_is_killed_once,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PARTITIONS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    running = SecureStack(tmp_path_factory.mktemp("cluster"), "--cluster", "3", "--partitions", str(PARTITIONS))
    running.start()
    yield running
    running.stop()


async def test_a_killed_cluster_node_is_restarted_and_the_status_shows_the_cluster(
        stack: SecureStack, rollout_id: str) -> None:
    """Finding: a nats-server node SIGKILLed under `rollout up --cluster` stayed dead (a zombie)."""
    node = stack.data / "cluster" / "n2"
    pids = subprocess.run(["pgrep", "-f", f"nats-server -c {node}/"], capture_output=True, text=True).stdout.split()
    [pid] = pids
    restarts = child_status(stack.status(), "n2")["restarts"]

    async def during() -> None:
        os.kill(int(pid), signal.SIGKILL)

    await regression_is_killed_once(stack, rollout_id, f"{rollout_id}-ctl", during=during)

    def rejoined() -> bool:
        status = stack.status()
        cluster = status["cluster"]
        owners = cluster["partitions"]["owners"]
        return (child_status(status, "n2")["restarts"] == restarts + 1 and child_status(status, "n2")["state"] == "running"
                and [n["name"] for n in cluster["nodes"] if n["online"]] == ["n1", "n2", "n3"]
                and all(f"rollback_p{o['partition']}" in {c["name"] for c in o["consumers"]} for o in owners))

    # The consumers' listing is unknown while the stream's leader is re-elected: wait for it too.
    await until(lambda: asyncio.to_thread(rejoined), 60, "n2 restarted, back in the cluster, every partition owned")
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] != "Z", "the dead node was reaped"
    status = stack.status()
    cluster = status["cluster"]
    assert cluster["streams"][subjects.LOG_STREAM]["leader"] in {"n1", "n2", "n3"}
    owners = cluster["partitions"]["owners"]
    assert [o["partition"] for o in owners] == list(range(PARTITIONS))
    assert all(f"rollback_p{o['partition']}" in {c["name"] for c in o["consumers"]} for o in owners)
    text = cli("--config", str(stack.data / "secure" / "operator.toml"), "status").stdout
    assert "cluster rollout: nodes n1, n2, n3" in text and "stream RO_LOG: leader n" in text
    assert "partition 0: " in text and "child   n2 (nats-server): running" in text
