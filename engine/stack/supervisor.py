"""Child processes of ``rollout up``: one per consumer, restarted if they die.

Each child gets PR_SET_PDEATHSIG, so none outlives ``rollout up`` even if it is
SIGKILLed. Restarts back off from 0.5 s to 10 s so a crash loop does not spin a core.
A child that exits is marked dead for prometheus-client's multiprocess mode, so its
``live*`` gauges (queue depths, arm shares) leave the exposition with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from rollout_engine.engine.stack.processes import child_preexec, terminate

__all__ = ["Child", "Supervisor"]

log = logging.getLogger(__name__)


class Child:
    """One supervised command line."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                 log_file: Path | None = None) -> None:
        self.name = name
        self.log_file = log_file
        self.argv = list(argv)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        output = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            output = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                self.argv,
                env={**os.environ, **(self.env or {})},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                preexec_fn=child_preexec(),
            )
        finally:
            if output is not None:
                output.close()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        terminate(process, timeout)


class Supervisor:
    """Start children, restart the ones that exit, stop them all on request."""

    def __init__(self, children: Sequence[Child], log_dir: Path | None = None) -> None:
        """``log_dir``: write each child's output to ``<log_dir>/<name>.log`` instead of ours."""
        self.children = list(children)
        if log_dir is not None:
            for child in self.children:
                child.log_file = log_dir / f"{child.name}.log"

    def start(self) -> None:
        for child in self.children:
            child.start()

    async def watch(self, stop: asyncio.Event) -> None:
        backoff = {c.name: 0.5 for c in self.children}
        while not stop.is_set():
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    code = child.process.returncode
                    _mark_dead(child)
                    log.warning("%s exited with %s; restarting in %.1fs", child.name, code, backoff[child.name])
                    await asyncio.sleep(backoff[child.name])
                    backoff[child.name] = min(backoff[child.name] * 2, 10.0)
                    child.restarts += 1
                    if not stop.is_set():
                        child.start()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def _mark_dead(child: Child) -> None:
    """Drop the exited child's live gauges from the multiprocess directory it wrote to."""
    directory = (child.env or {}).get("PROMETHEUS_MULTIPROC_DIR")
    if directory and child.process is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.process.pid, directory)
