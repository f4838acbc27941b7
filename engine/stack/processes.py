"""Child processes that never outlive us and stop politely: shared by the embedded
server and the supervisor of consumer processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

__all__ = ["ask_priority", "child_preexec", "terminate", "terminate_all"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when its parent dies, then leave Ctrl-C's group."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()


def child_preexec(nice: int = 0, *, niceness: int | None = None) -> Callable[[], None] | None:
    """The ``preexec_fn`` for children: PR_SET_PDEATHSIG on Linux (no orphans, even after
    a SIGKILL of the parent), nothing elsewhere; then ``nice`` added to the child's niceness
    (positive only: lowering a priority needs no privilege, raising one does), or the
    child set to ``niceness`` when that is lower than ours (a larger CPU share: it needs
    CAP_SYS_NICE, and without it the child keeps ours; the caller reads what it got).

    Set before ``exec``, a niceness holds for every thread the child creates (on Linux a
    niceness is per thread): renicing a running multi-threaded server would move its main
    thread only."""
    linux = sys.platform.startswith("linux")
    boost = niceness is not None and niceness < 0 and hasattr(os, "setpriority")
    if nice <= 0 and not boost:
        return _die_with_parent if linux else None

    def preexec() -> None:  # pragma: no cover - runs in the child
        if linux:
            _die_with_parent()
        with contextlib.suppress(OSError):
            if boost and niceness is not None and niceness < os.getpriority(os.PRIO_PROCESS, 0):
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
            elif nice > 0:
                os.nice(nice)
    return preexec


def ask_priority(nice: int) -> tuple[int, str]:
    """Lower this process's niceness to ``nice`` (a larger CPU share) if it is higher.

    Returns (the niceness now, why it is not ``nice``: "" when it is, or nothing was
    asked). Raising a priority needs CAP_SYS_NICE; without it the niceness stays and the
    reason says what would grant it. Never raises: a kill path that runs at the default
    priority is better than one that does not run.
    """
    if not hasattr(os, "setpriority"):
        return 0, "this platform has no setpriority"
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= 0 or current <= nice:
        return current, ""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        return current, (f"niceness {nice} refused ({exc.strerror or exc}): run as root or grant CAP_SYS_NICE, "
                         "or give the container a larger CPU weight (compose cpu_shares, a Kubernetes CPU request) "
                         "and set kill_path_nice = 0 to stop asking")
    return os.getpriority(os.PRIO_PROCESS, 0), ""


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM (the child drains and commits), then SIGKILL if it lingers past ``timeout``."""
    terminate_all([process], timeout)


def terminate_all(processes: Iterable[subprocess.Popen[bytes] | None], timeout: float = 10.0) -> None:
    """SIGTERM every process at once (each drains and commits on its own), wait for all of
    them within one ``timeout``, then SIGKILL what lingers. Stopped one after another, a
    dozen children of ``rollout up --cluster 3 --partitions 2`` took 14 s to stop."""
    alive = [p for p in processes if p is not None and p.poll() is None]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in alive:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
