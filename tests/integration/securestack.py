"""A real ``rollout up --secure`` for attack tests: start it, act as any role, check the oracle.

The oracle of every attack test is the same (``regression_is_killed_once``): beside the
attack, a real regression (seeded runs whose candidate costs 2.5x the baseline) in the
attacked rollout and in an untouched control rollout is killed exactly once each, and
the SDK, following control state with the ``app`` credential, then serves every unit
the baseline. One stack serves a whole test module (``SecureStack.start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError

from rollout_engine.consumers.consumer import store_name
from rollout_engine.consumers.rollback.scenario import Profile, runs
from rollout_engine.engine.api.client import call
from rollout_engine.engine.bus import connect
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.security import ROLES, inbox_prefix
from rollout_engine.events import Event, KillSwitch, decode, encode, kind_of, subjects

ROLLOUT = [sys.executable, "-m", "rollout_engine.engine.cli"]
VIOLATION = "permissions violation"
BAD = Profile(cost_cents=5.0)
"""The regression: the candidate costs 5 cents a run against the baseline's 2 (default policy: kill)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SecureStack:
    """``rollout up --secure ...`` as a child process, and every role's credentials."""

    def __init__(self, root: Path, *flags: str) -> None:
        self.root = root
        self.data = root / "data"
        self.flags = flags
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.errors: dict[str, list[str]] = {}
        self.url = ""
        self.passwords: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        """Start and wait until the API serves and every consumer folds; stop it again on failure."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
        env["ROLLOUT_METRICS_PORT"] = str(self.metrics_port)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "up.log", "ab") as log:
            self.process = subprocess.Popen([*ROLLOUT, "--data-dir", str(self.data), "up", "--secure", *self.flags],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while "secure mode" not in self.log():
            assert self.process.poll() is None, f"rollout up ended early:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"rollout up did not start:\n{self.log()[-3000:]}"
            time.sleep(0.1)
        self.url = (self.data / "nats.url").read_text().strip()
        for role in ROLES:
            config = tomllib.loads((self.data / "secure" / f"{role}.toml").read_text())
            self.passwords[role] = config["engine"]["password"]
        while not self.ready():
            assert self.process.poll() is None, f"rollout up ended early:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"rollout up did not get ready:\n{self.log()[-3000:]}"
            time.sleep(0.5)

    def ready(self) -> bool:
        """The API serves and every consumer has its durable(s) on the log."""
        if "rollout api: serving" not in self.log():
            return False
        from rollout_engine.consumers import registry

        wanted = {durable for name in registry.names() for durable in self.durables(name)}
        log = next((s for s in self.status()["streams"] if s["name"] == subjects.LOG_STREAM), {})
        return wanted <= {c["name"] for c in log.get("consumers", [])}

    def durables(self, consumer: str) -> tuple[str, ...]:
        """The durable names ``consumer`` folds under with this stack's flags (one per partition).

        Known from the flags rather than listed from the server: while a cluster re-elects the
        stream's leader, the consumers' listing can come back empty.
        """
        if "--partitions" not in self.flags:
            return (store_name(consumer, None),)
        partitions = int(self.flags[self.flags.index("--partitions") + 1])
        return tuple(store_name(consumer, k) for k in range(partitions))

    def log(self) -> str:
        path = self.root / "up.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # --- acting as a role ------------------------------------------------------------------
    def settings(self, role: str) -> Settings:
        return load_settings(self.data / "secure" / f"{role}.toml", env={}, nats_url=self.url)

    async def client(self, role: str) -> Client:
        """A raw connection with the role's credential; server errors land in ``errors[role]``."""
        errors = self.errors.setdefault(role, [])

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        return await nats.connect(self.url.split(","), user=role, password=self.passwords[role],
                                  inbox_prefix=inbox_prefix(role), error_cb=on_error, connect_timeout=3)

    async def violation(self, role: str, fragment: str, timeout: float = 10.0) -> str:
        """The server's permission violation mentioning ``fragment`` (the server lower-cases subjects)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.errors.get(role, []):
                if VIOLATION in line and fragment.lower() in line.lower():
                    return line
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permission violation for {fragment!r} seen by {role}: {self.errors.get(role)}")

    async def operator(self, endpoint: str, body: dict[str, Any]) -> Any:
        nc = await connect(self.settings("operator"), name="test-operator")
        try:
            return await call(nc, endpoint, body, timeout=20)
        finally:
            await nc.close()

    def status(self) -> dict[str, Any]:
        """``rollout status --json`` with the operator's settings file, as on-call would run it."""
        done = subprocess.run([*ROLLOUT, "--config", str(self.data / "secure" / "operator.toml"), "status", "--json"],
                              capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")})
        assert done.returncode == 0, done.stderr[-2000:]
        return dict(json.loads(done.stdout))

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())


# --- the oracle ---------------------------------------------------------------------------
def regression(rollout: str, n: int = 200) -> list[Event]:
    """Seeded runs of a candidate that costs 2.5x the baseline, at 50 %, dated now."""
    return runs(rollout, n, canary_pct=50.0, candidate=BAD, t0=time.time_ns() // 1_000_000 - 5_000)


async def publish(js: Any, events: list[Event]) -> None:
    for event in events:
        await js.publish_async(subjects.event(event.rollout, kind_of(event)), encode(event))
    await js.publish_async_completed()


async def kill_switches(js: Any, rollout: str) -> list[KillSwitch]:
    """The kill switches of ``rollout`` stored in the log (partitioned subjects included)."""
    out: list[KillSwitch] = []
    info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=f"{subjects.ROOT}.ctl.{rollout}.kill_switch.>")
    total = sum((info.state.subjects or {}).values())
    if total:
        sub = await js.subscribe(f"{subjects.ROOT}.ctl.{rollout}.kill_switch.>", stream=subjects.LOG_STREAM,
                                 ordered_consumer=True)
        try:
            while len(out) < total:
                msg = await sub.next_msg(timeout=10)
                event = decode(msg.data)
                assert isinstance(event, KillSwitch)
                out.append(event)
        finally:
            await sub.unsubscribe()
    return out


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition``; a request that times out (a cluster electing a leader) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await condition():
                return
        except (TimeoutError, NatsError) as exc:
            last = exc
        else:
            last = None
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last error: {last!r})"
        await asyncio.sleep(0.1)


async def settled(js: Any, consumers: tuple[str, ...]) -> None:
    """Wait until these durables have folded and acked everything (twice in a row)."""
    assert consumers, "settled() needs the durables to wait for: with none it could never be calm"
    calm = 0
    deadline = time.monotonic() + 60
    while calm < 2:
        assert time.monotonic() < deadline, f"{consumers} did not catch up"
        infos = []
        with contextlib.suppress(Exception):
            infos = [await js.consumer_info(subjects.LOG_STREAM, name) for name in consumers]
        calm = calm + 1 if infos and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos) else 0
        await asyncio.sleep(0.3)


async def regression_is_killed_once(stack: SecureStack, attacked: str, control: str,
                                    attack: Callable[[list[Event]], Awaitable[None]] | None = None,
                                    during: Callable[[], Awaitable[None]] | None = None) -> dict[str, KillSwitch]:
    """The oracle (module docstring). ``attack(events)`` runs before the regression is published
    (it may read the events it will race), ``during()`` while it is being folded."""
    engine = await stack.client("engine")
    producer = await stack.client("producer")
    killed: dict[str, KillSwitch] = {}
    try:
        ejs = engine.jetstream()
        async with RolloutClient(stack.settings("app"), producer=f"sdk-{attacked}"[:60],
                                 outbox_path=stack.root / f"outbox-{attacked}.sqlite", catch_up_timeout_s=30) as sdk:
            for rollout in (attacked, control):
                await stack.operator("config", {"rollout": rollout, "actor": "test", "canary_pct": 50.0,
                                                "create": True, "reason": "open the canary"})

            async def canaries_open() -> bool:
                return all(sdk.state(r).canary_pct == 50.0 for r in (attacked, control))

            await until(canaries_open, 30, "the SDK to see both canaries at 50 %")
            assert any(sdk.decide(attacked, f"user-{i}").variant == "candidate" for i in range(100))
            events = {rollout: regression(rollout) for rollout in (attacked, control)}
            if attack is not None:
                await attack(events[attacked])
            pjs = producer.jetstream()
            await publish(pjs, events[attacked] + events[control])
            if during is not None:
                await during()

            async def both_killed() -> bool:
                return all([len(await kill_switches(ejs, r)) >= 1 for r in (attacked, control)])

            await until(both_killed, 60, "a kill switch in each regressing rollout")
            await settled(ejs, stack.durables("rollback"))
            for rollout in (attacked, control):
                kills = await kill_switches(ejs, rollout)
                assert len(kills) == 1, f"{rollout}: {len(kills)} kill switches, expected exactly one"
                killed[rollout] = kills[0]

            async def sdk_obeys() -> bool:
                return all(sdk.state(r).kill_switch for r in (attacked, control))

            await until(sdk_obeys, 30, "the SDK to obey both kill switches")
            for rollout in (attacked, control):
                served = {sdk.decide(rollout, f"user-{i}").variant for i in range(200)}
                assert served == {"baseline"}, f"{rollout}: the SDK still serves {served}"
    finally:
        await producer.close()
        await engine.close()
    return killed


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``rollout ARGV...`` in a clean environment (no ROLLOUT_* of ours)."""
    return subprocess.run([*ROLLOUT, *argv], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")})


def lock_holders(stack: SecureStack, prefix: str = "") -> dict[str, int]:
    """Consumer store -> pid of the process folding it (from its lock file)."""
    holders = {}
    for lock in (stack.data / "consumers").glob(f"{prefix}*.lock"):
        text = lock.read_text().strip()
        if text.isdigit():
            holders[lock.stem] = int(text)
    return holders


def child_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    """One child of ``rollout up`` in a ``rollout status --json`` report."""
    supervisor = status["supervisor"]
    assert isinstance(supervisor, dict), "rollout status shows the supervisor's children"
    return dict(next(c for c in supervisor["children"] if c["name"] == name))
