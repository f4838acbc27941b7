"""``rollout up`` runs its bulk consumers at a lower priority than the rollback consumer,
which asks for a higher one (setting ``kill_path_nice``) when the OS grants it, and so
does the embedded nats-server every kill switch passes through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rollout_engine.consumers import registry
from rollout_engine.engine.cli.up import NICE
from rollout_engine.engine.stack.supervisor import Child


def niceness_of(child: Child, out: Path) -> int:
    child.log_file = out
    child.spawn()
    child.process.wait(30)
    return int(out.read_text().strip())


def test_a_child_with_nice_runs_at_that_lower_priority(tmp_path: Path) -> None:
    probe = [sys.executable, "-c", "import os; print(os.nice(0))"]
    base = os.nice(0)
    assert niceness_of(Child("bulk", probe, nice=5), tmp_path / "bulk.log") == base + 5
    assert niceness_of(Child("kill-path", probe), tmp_path / "plain.log") == base


def test_only_consumers_off_the_kill_path_are_niced() -> None:
    assert "rollback" not in NICE and "control" not in NICE
    assert all(value > 0 for value in NICE.values())


def test_only_the_rollback_consumer_is_on_the_kill_path() -> None:
    assert [spec.name for spec in registry.specs() if spec.kill_path] == ["rollback"]


def _ask(nice: int, as_nobody: bool = False) -> tuple[int, str]:
    """ask_priority in a fresh process (a granted request cannot be undone without privilege)."""
    drop = "os.setuid(65534); " if as_nobody else ""
    code = (f"import json, os; from rollout_engine.engine.stack.processes import ask_priority; {drop}"
            f"print(json.dumps(ask_priority({nice})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    nice_now, why = json.loads(out.stdout)
    return int(nice_now), str(why)


def test_asking_for_a_higher_priority_is_granted_with_privilege_and_explained_without() -> None:
    base = os.nice(0)
    if os.geteuid() == 0:
        assert _ask(-5) == (min(base, -5), "")
        refused = _ask(-5, as_nobody=True)  # the same request without the privilege
    else:
        refused = _ask(-5)
    if base > -5:
        assert refused[0] == base and "CAP_SYS_NICE" in refused[1] and "kill_path_nice = 0" in refused[1]
    assert _ask(0) == (base, "")  # 0 asks for nothing


def _thread_niceness(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (field 19 of /proc/PID/task/TID/stat)."""
    out = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        out.add(int(fields[16]))  # the 19th field; fields here start at the 3rd
    return out


def test_the_embedded_server_asks_for_the_kill_path_share_for_every_thread(tmp_path: Path) -> None:
    """Every kill switch passes through nats-server: ``rollout up`` starts it at
    ``kill_path_nice``, set before exec so all its threads have it (renicing a running Go
    process would move its main thread only). Without the privilege it keeps ours."""
    from rollout_engine.engine.stack.server import EmbeddedServer

    base = os.nice(0)
    server = EmbeddedServer(tmp_path / "nats", port=0, niceness=-3)
    server.start()
    try:
        assert server.process is not None
        expected = min(base, -3) if os.geteuid() == 0 else base
        assert server.niceness == expected
        threads = _thread_niceness(server.process.pid)
        assert len(threads) == 1 and threads == {expected}, threads
    finally:
        server.stop()
