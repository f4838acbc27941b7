"""Children of ``rollout up``: consumers, the API and the nats-server node(s), each kept running.

A kill switch can only fire while the rollback consumer runs, so a crash must cost
milliseconds, not the seconds a shared, growing backoff used to add. The policy:

* **independent**: every child has its own watch task; a crash is seen within
  ``POLL_S`` and a replacement starts at once, whatever the other children do;
* **backoff only for a crash loop**: a child that exits within ``FAST_EXIT_S`` of its
  start exited *fast*. The first fast exit restarts at once; from the second in a row
  each restart waits ``BACKOFF_START_S``, doubling to ``BACKOFF_MAX_S``, so a broken
  child cannot spin a core. A run of at least ``FAST_EXIT_S`` resets both;
* **crash loops are visible**: after ``CRASH_LOOP_AFTER`` fast exits in a row the child
  is in ``crash_loop`` (logged as an error; ``rollout status`` shows it from the KV key
  ``engine.supervisor``; ``rollout_child_crash_loop{child}`` is 1) until it runs healthy;
* **warm standbys** (``instances`` > 1): extra processes of the same consumer wait on its
  store lock with everything imported and connected, and take over the moment the active
  one dies (``rollout consumer NAME --standby``); the lost one is replaced behind them;
* **nats-server nodes are children too** (:class:`NodeChild`): a node killed with
  SIGKILL is reaped (no zombie), logged and started again on the same ports and data,
  so it rejoins the cluster.

Each child gets PR_SET_PDEATHSIG, so none outlives ``rollout up`` even if it is SIGKILLed.
A process that exits is marked dead for prometheus-client's multiprocess mode, so its
``live*`` gauges (queue depths, arm shares) leave the exposition with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_engine.engine.stack.processes import child_preexec, terminate_all
from rollout_engine.engine.stack.server import EmbeddedServer, ServerError

__all__ = ["BACKOFF_MAX_S", "CRASH_LOOP_AFTER", "FAST_EXIT_S", "Child", "ChildHealth", "NodeChild", "Supervisor",
           "SupervisorMetrics"]

log = logging.getLogger(__name__)

POLL_S = 0.05
FAST_EXIT_S = 10.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
CRASH_LOOP_AFTER = 3


@dataclass
class ChildHealth:
    """Restart bookkeeping of one child (pure: the policy is testable without processes)."""

    restarts: int = 0
    fast_exits: int = 0
    backoff_s: float = 0.0
    last_exit_code: int | None = None
    last_exit_ms: int = 0
    last_uptime_s: float = 0.0

    @property
    def crash_loop(self) -> bool:
        return self.fast_exits >= CRASH_LOOP_AFTER

    def exited(self, code: int | None, uptime_s: float, now_ms: int) -> float:
        """Record an exit; return the delay before the replacement starts."""
        self.last_exit_code, self.last_exit_ms, self.last_uptime_s = code, now_ms, uptime_s
        if uptime_s >= FAST_EXIT_S:
            self.fast_exits, self.backoff_s = 0, 0.0
            return 0.0
        self.fast_exits += 1
        if self.fast_exits == 1:
            return 0.0
        self.backoff_s = BACKOFF_START_S if self.backoff_s == 0 else min(self.backoff_s * 2, BACKOFF_MAX_S)
        return self.backoff_s

    def healthy_for(self, uptime_s: float) -> None:
        """A process has now run long enough: the crash loop (if any) is over."""
        if uptime_s >= FAST_EXIT_S and self.fast_exits:
            self.fast_exits, self.backoff_s = 0, 0.0


@dataclass
class _Run:
    process: Any
    started: float = field(default_factory=time.monotonic)


class Child:
    """One supervised command line, with ``instances`` processes of it (1 + warm standbys)."""

    kind = "process"

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str | None] | None = None,
                 log_file: Path | None = None, *, instances: int = 1, standby_argv: Sequence[str] = (),
                 nice: int = 0) -> None:
        """``env`` is added to ours; a None value removes the variable. ``standby_argv`` is
        appended to every instance's command line when ``instances`` > 1: the instances
        then share one store lock, whichever holds it is the active one. ``nice`` > 0 runs
        the processes at that lower priority (``os.nice``)."""
        self.name = name
        self.log_file = log_file
        self.argv = list(argv)
        self.env = env or {}
        self.instances = instances
        self.standby_argv = list(standby_argv)
        self.nice = nice
        self.runs: list[_Run] = []
        self.health = ChildHealth()

    @property
    def process(self) -> Any:
        """The first live process (the active one, for a consumer with standbys), or None."""
        return self.runs[0].process if self.runs else None

    def pids(self) -> list[int]:
        return [run.process.pid for run in self.runs if getattr(run.process, "pid", None)]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def spawn(self) -> None:
        """Start one more process (a standby when one already runs)."""
        argv = self.argv + (self.standby_argv if self.standby_argv and self.instances > 1 else [])
        output = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            output = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(argv, env=self._environment(), stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT if output else None, preexec_fn=child_preexec(self.nice))
        finally:
            if output is not None:
                output.close()
        self.runs.append(_Run(process))

    async def spawn_async(self) -> None:
        self.spawn()

    def start(self) -> None:
        while len(self.runs) < self.instances:
            self.spawn()

    def reap(self) -> list[tuple[int | None, float]]:
        """Exited processes since the last call: (exit code, uptime in seconds); they are forgotten."""
        gone, alive = [], []
        now = time.monotonic()
        for run in self.runs:
            code = run.process.poll()
            if code is None:
                alive.append(run)
                self.health.healthy_for(now - run.started)
            else:
                gone.append((code, now - run.started))
                self._mark_dead(run.process.pid)
        self.runs = alive
        return gone

    def _mark_dead(self, pid: int) -> None:
        """Drop the exited process's live gauges from the multiprocess directory it wrote to."""
        directory = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, directory)

    def release(self) -> list[subprocess.Popen[bytes]]:
        """Forget this child's processes (no restart from now on) and return them to stop."""
        runs, self.runs = self.runs, []
        return [run.process for run in runs]

    def stop(self, timeout: float = 10.0) -> None:
        terminate_all(self.release(), timeout)


class NodeChild(Child):
    """A nats-server (one node of ``rollout up --cluster N``, or the single server): restarted on
    the same ports and data directory, so clients reconnect and a node rejoins its cluster."""

    kind = "nats-server"

    def __init__(self, name: str, server: EmbeddedServer) -> None:
        super().__init__(name, [])
        self.server = server

    def adopt(self) -> None:
        """Watch the already started server (``rollout up`` starts nodes before anything else)."""
        if self.server.process is not None:
            self.runs = [_Run(self.server.process)]
            self.server.port = self.server.client_port  # a restart must come back on the same port

    def spawn(self) -> None:
        self.server.process = None  # reaped already; start() writes the same config
        self.server.start()
        self.runs.append(_Run(self.server.process))

    async def spawn_async(self) -> None:
        await asyncio.to_thread(self.spawn)

    def start(self) -> None:
        if not self.runs:
            self.spawn()

    def release(self) -> list[subprocess.Popen[bytes]]:
        self.runs = []
        process, self.server.process = self.server.process, None
        return [process] if process is not None else []

    def stop(self, timeout: float = 10.0) -> None:
        terminate_all(self.release(), timeout)


class Supervisor:
    """Start children, restart the ones that exit (see the module docstring), stop them all on request."""

    def __init__(self, children: Sequence[Child], log_dir: Path | None = None) -> None:
        """``log_dir``: write each process child's output to ``<log_dir>/<name>.log`` instead of ours."""
        self.children = list(children)
        self.changed = asyncio.Event()
        self.started_ms = int(time.time() * 1000)
        if log_dir is not None:
            for child in self.children:
                if not isinstance(child, NodeChild):
                    child.log_file = log_dir / f"{child.name}.log"

    def add(self, child: Child) -> None:
        self.children.append(child)

    def start(self) -> None:
        for child in self.children:
            child.start()

    async def watch(self, stop: asyncio.Event) -> None:
        """Keep every child running until ``stop`` is set, each on its own task."""
        await asyncio.gather(*(self._keep(child, stop) for child in self.children))

    async def _keep(self, child: Child, stop: asyncio.Event) -> None:
        due = 0.0  # monotonic time the next replacement may start
        while not stop.is_set():
            for code, uptime in child.reap():
                delay = child.health.exited(code, uptime, int(time.time() * 1000))
                due = max(due, time.monotonic() + delay)
                self.changed.set()
                level = logging.ERROR if child.health.crash_loop else logging.WARNING
                log.log(level, "%s (%s) exited with %s after %.1f s; %s%s", child.name, child.kind, code, uptime,
                        f"restarting in {delay:.1f} s" if delay else "restarting now",
                        f" (crash loop: {child.health.fast_exits} fast exits in a row)" if child.health.crash_loop
                        else "")
            if len(child.runs) < child.instances and time.monotonic() >= due and not stop.is_set():
                try:
                    await child.spawn_async()
                    child.health.restarts += 1
                except (OSError, ServerError) as exc:
                    delay = child.health.exited(None, 0.0, int(time.time() * 1000))
                    due = time.monotonic() + max(delay, BACKOFF_START_S)
                    log.error("%s (%s) could not start: %s; retrying in %.1f s", child.name, child.kind, exc,
                              due - time.monotonic())
                self.changed.set()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)

    def snapshot(self) -> dict[str, Any]:
        """What ``rollout status`` shows: one entry per child (the KV value of ``engine.supervisor``)."""
        now = time.monotonic()
        children = []
        for child in self.children:
            health = child.health
            state = "crash_loop" if health.crash_loop else ("running" if child.runs else "restarting")
            children.append({
                "name": child.name,
                "kind": child.kind,
                "state": state,
                "processes": len(child.runs),
                "instances": child.instances,
                "uptime_s": round(now - child.runs[0].started, 1) if child.runs else 0.0,
                "restarts": health.restarts,
                "fast_exits": health.fast_exits,
                "backoff_s": health.backoff_s,
                "last_exit_code": health.last_exit_code,
                "last_exit_ms": health.last_exit_ms,
            })
        return {"pid": os.getpid(), "started_ms": self.started_ms, "updated_ms": int(time.time() * 1000),
                "children": children}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consumers and the API first, all at once (each drains and commits on its own),
        then the servers they use, all at once."""
        nodes = [c for c in self.children if isinstance(c, NodeChild)]
        terminate_all([p for c in self.children if c not in nodes for p in c.release()], timeout)
        terminate_all([p for c in nodes for p in c.release()], timeout)


class SupervisorMetrics:
    """Prometheus collector of the supervisor (registered on ``rollout up``'s ``/metrics``).

    ``rollout_child_up{child,kind}`` (processes running), ``rollout_child_restarts_total{child,kind}``
    and ``rollout_child_crash_loop{child,kind}`` (1 while in a crash loop). Every child has
    its series from the start (at 0), labelled by name, never by pid, so a restart makes
    no new series.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> Any:
        return iter(())

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["child", "kind"]
        up = GaugeMetricFamily("rollout_child_up", "Processes of a child of `rollout up` running now "
                               "(2 for a consumer with a warm standby).", labels=labels)
        restarts = CounterMetricFamily("rollout_child_restarts", "Times a child of `rollout up` was started "
                                       "again after it exited.", labels=labels)
        loop = GaugeMetricFamily("rollout_child_crash_loop", "1 while a child keeps exiting within "
                                 f"{FAST_EXIT_S:g} s of its start ({CRASH_LOOP_AFTER} times in a row or more).",
                                 labels=labels)
        for child in self.supervisor.children:
            key = [child.name, child.kind]
            up.add_metric(key, len(child.runs))
            restarts.add_metric(key, child.health.restarts)
            loop.add_metric(key, 1 if child.health.crash_loop else 0)
        yield from (up, restarts, loop)
