"""What every command shares: settings from flags, the event loop, output and errors.

Output rules: ``--json`` prints machine-readable JSON on stdout, and a failure as one JSON
object on stderr (``{"error": {"code": ..., "message": ...}}``); otherwise text, with
colour only on a terminal and never when ``NO_COLOR`` is set, so a pipe or a log file
gets no escape codes. Help texts are plain text: module docstrings lose their reST
markup (``Parser``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from rollout_engine.engine.bus import BusUnavailable
from rollout_engine.engine.settings import Settings, SettingsError, load_settings

__all__ = [
    "CliError",
    "Parser",
    "UsageError",
    "add_json_flag",
    "color",
    "error",
    "plain",
    "print_json",
    "quiet_broken_pipe",
    "run",
    "sanitize",
    "settings_from",
    "stop_on_signals",
    "when",
]

T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


class CliError(Exception):
    """A user-facing failure: one line on stderr (one JSON object under ``--json``), exit 2.

    ``code`` names the kind of failure for scripts: ``usage`` (bad flags), ``invalid``
    (a value the engine refuses), ``not_found`` (no such rollout or file), ``conflict``
    (not possible in the current state), ``unavailable`` (no NATS or no API), ``failed``.
    """

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_api(cls, status: int, message: str) -> CliError:
        """An API refusal (HTTP-like ``status``) as a CLI error with the matching code."""
        return cls(message, _API_CODES.get(status, "failed"))


_API_CODES = {400: "invalid", 403: "forbidden", 404: "not_found", 409: "conflict", 503: "unavailable"}


class UsageError(CliError):
    """Bad flags or arguments, as argparse finds them (code ``usage``)."""

    def __init__(self, message: str, usage: str, prog: str) -> None:
        super().__init__(message, "usage")
        self.usage, self.prog = usage, prog


_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str | None:
    """Help text without reST markup: ``x`` and :func:`x` become x."""
    return _RST_LITERAL.sub(r"\1", _RST_ROLE.sub(r"\1", text)) if text else text


class Parser(argparse.ArgumentParser):
    """The parser of every ``rollout`` command: descriptions keep their line breaks and
    lose their reST markup, and a usage error raises :class:`UsageError` so ``main``
    prints it as text or, under ``--json``, as JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs["description"] = plain(kwargs.get("description"))
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse declares NoReturn
        raise UsageError(message, self.format_usage(), self.prog)


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


def error(message: str, code: str = "failed", as_json: bool = False) -> None:
    """Report a failure on stderr: ``rollout: error: ...``, or one JSON object under ``--json``."""
    if as_json:
        sys.stderr.write(msgspec.json.encode({"error": {"code": code, "message": message}}).decode() + "\n")
    else:
        sys.stderr.write(f"rollout: error: {message}\n")


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (``rollout events X | head``): stop quietly.

    stdout is pointed at /dev/null so the interpreter's final flush does not raise again;
    the exit status is 0, as the reader chose to stop reading.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def when(time_ms: int, now_ms: int | None = None) -> str:
    """An event time for people: ISO 8601 in UTC and its age, e.g. ``2026-12-02T10:04:05Z (3m ago)``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(time_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds = (now_ms - time_ms) / 1000
    if seconds < 0:
        return f"{stamp} (in the future)"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{stamp} ({int(seconds // size)}{unit} ago)"
    return f"{stamp} ({int(seconds)}s ago)"


def handler(func: Callable[[argparse.Namespace], Coroutine[Any, Any, int | None]]) -> Callable[[argparse.Namespace], int]:
    """Adapt an async command to argparse's ``handler``; map bus errors to CliError."""

    def wrapper(args: argparse.Namespace) -> int:
        # at call time: consumer_metrics loads prometheus_client, which most commands never need
        from rollout_engine.engine.stack.consumer_metrics import MetricsPortInUse

        try:
            return int(run(func(args)) or 0)
        except BusUnavailable as exc:
            raise CliError(str(exc), "unavailable") from None
        except MetricsPortInUse as exc:
            raise CliError(str(exc), "unavailable") from None

    return wrapper
