"""What every command shares: settings from flags, the event loop, output and errors.

Output rules (seed 003): ``--json`` prints machine-readable JSON; otherwise text, with
colour only on a terminal and never when ``NO_COLOR`` is set, so a pipe or a log file
gets no escape codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import msgspec

from rollout_engine.engine.settings import Settings, SettingsError, load_settings

__all__ = [
    "CliError",
    "add_json_flag",
    "color",
    "error",
    "print_json",
    "run",
    "sanitize",
    "settings_from",
    "stop_on_signals",
]

T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 2."""


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from defaults, file, environment, then the global flags."""
    try:
        return load_settings(
            getattr(args, "config", None),
            nats_url=getattr(args, "nats_url", None),
            data_dir=getattr(args, "data_dir", None),
            **overrides,
        )
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when available (+30-60% consumer throughput here)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


def stop_on_signals(stop: Callable[[], object]) -> None:
    """Call ``stop`` on SIGINT or SIGTERM, so a long-running command drains and commits."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(data), indent=2).decode() + "\n")
    sys.stdout.flush()


def use_color(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def color(text: str, code: str, stream: Any = None) -> str:
    """Wrap ``text`` in an ANSI colour only when writing to a terminal."""
    return f"\x1b[{code}m{text}\x1b[0m" if use_color(stream) else text


def sanitize(text: str, limit: int = 200) -> str:
    """Strip escape sequences and control characters from untrusted text before printing."""
    clean = _ANSI.sub("", text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def error(message: str) -> None:
    sys.stderr.write(f"rollout: error: {message}\n")


def handler(func: Callable[[argparse.Namespace], Coroutine[Any, Any, int | None]]) -> Callable[[argparse.Namespace], int]:
    """Adapt an async command to argparse's ``handler``; map bus errors to CliError."""

    def wrapper(args: argparse.Namespace) -> int:
        from rollout_engine.engine.bus import BusUnavailable

        try:
            return int(run(func(args)) or 0)
        except BusUnavailable as exc:
            raise CliError(str(exc)) from None

    return wrapper
