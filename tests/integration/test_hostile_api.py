"""Hostile input at the operator edges: every API endpoint (``ro.api.*``) and the CLI
commands that take ids, fuzzed with hypothesis against a real nats-server and API.

The contract under attack:

- a request is answered, always: a result, or a refusal with code 400/404/409 and a
  message; never a 500, never silence, and the service keeps serving;
- no id can steer a subject: whatever a field holds (``.``, ``*``, ``>``, whitespace,
  control bytes, another subject), every message on the log is on a subject built by
  ``events.subjects`` from a valid token, and decodes as a valid event;
- the CLI refuses bad ids with exit code 2 and a message, never a traceback.

Hypothesis drives synchronous tests; the NATS side runs on a private event loop in a
background thread (the API service and the test's connection live there).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout_engine.engine.api.client import ENDPOINTS
from rollout_engine.engine.api.service import serve_api
from rollout_engine.engine.bus import connect, provision
from rollout_engine.engine.cli import main as cli_main
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.engine.stack.server import EmbeddedServer
from rollout_engine.events import decode_message, subjects
from rollout_engine.events.ids import is_token

INJECTIONS = ["a.b", "*", ">", "ro.ctl.victim.kill_switch", "victim.kill_switch", "x y", "x\ny", "x\r\n", "\x00",
              "a*", "a>", "..", ".", "", " ", "é", "🚀", "a" * 65, "a" * 5000, "$SRV.PING", "_INBOX.x", "-", "_x",
              "ro.evt.*.metric", "x\tz", "x\x7f", "\u202e", "%2e", "a/b", "a\\b", "null"]
hostile_text = st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=80),
                         st.text(alphabet=st.sampled_from(".*> \n\t\x00-_aZ9"), max_size=20))
hostile_value = st.one_of(hostile_text, st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                          st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
FIELDS = ["rollout", "actor", "reason", "canary_pct", "request_id", "policy", "create", "dry_run", "rollouts"]
bodies = st.dictionaries(st.sampled_from(FIELDS), hostile_value, max_size=6)
raw_requests = st.one_of(bodies.map(msgspec.json.encode), st.binary(max_size=200),
                         st.sampled_from([b"[]", b"1", b"null", b'"x"', b"{", b"\xff\xfe", b"{}" * 1000]))


class Background:
    """An event loop in a thread with a NATS connection and the API service on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop = asyncio.Event()
        self.nc: Any = None
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.nc = await connect(self.settings, name="test-hostile")
        await provision(self.nc.jetstream(), self.settings)
        ready = asyncio.Event()
        self.server = asyncio.ensure_future(serve_api(self.nc, self.stop, ready))
        await ready.wait()

    async def _close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await self.server
        await self.nc.close()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def background(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    bg = Background(load_settings(env={}, nats_url=nats_server.url, data_dir=str(tmp_path_factory.mktemp("hostile"))))
    yield bg
    bg.close()


async def _request(nc: Any, endpoint: str, data: bytes) -> tuple[str | None, bytes]:
    msg = await nc.request(subjects.api(endpoint), data, timeout=10)
    return (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data


async def _log_is_clean(nc: Any) -> int:
    """Every log message is on a subject of the subject map and holds valid events; returns the count."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.LOG_STREAM)).state.last_seq
    for seq in range(1, last + 1):
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
        parsed = subjects.parse(msg.subject or "")
        events = decode_message(msg.data or b"")
        for event in events:
            rollout = getattr(event, "rollout", None)
            assert rollout is None or is_token(rollout), (msg.subject, rollout)
            if rollout is not None:
                assert getattr(parsed, "rollout", rollout) == rollout, (msg.subject, rollout)
    return last


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(ENDPOINTS), data=raw_requests)
def test_every_endpoint_answers_hostile_requests_without_a_server_error(background: Background,
                                                                        endpoint: str, data: bytes) -> None:
    code, payload = background.run(_request(background.nc, endpoint, data))
    assert code in (None, "400", "404", "409"), (endpoint, data[:200], code, payload[:300])
    if code is not None:
        assert msgspec.json.decode(payload)["error"], "a refusal says what was wrong"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(["rollback", "resume", "config", "evaluate", "status"]),
       field=st.sampled_from(["rollout", "actor", "request_id"]), bad=st.sampled_from([s for s in INJECTIONS if s]))
def test_subject_injection_in_any_id_is_refused(background: Background, endpoint: str, field: str, bad: str) -> None:
    body = {"rollout": "hostile-target", "actor": "alice", "reason": "fuzz", "canary_pct": 5.0, "create": True,
            "request_id": "req-1"}
    body[field] = bad
    code, payload = background.run(_request(background.nc, endpoint, msgspec.json.encode(body)))
    if is_token(bad) and not (field == "rollout" and bad.startswith("_")):
        return  # a valid token is not an injection
    if field == "rollout" or endpoint in ("rollback", "resume", "config"):
        assert code == "400", (endpoint, field, bad, code, payload[:300])
        assert field in msgspec.json.decode(payload)["error"]
    else:  # a field this endpoint does not use here: refused or ignored, never stored (see the log check)
        assert code in (None, "400", "404", "409"), (endpoint, field, bad, code, payload[:300])


def test_the_log_holds_only_well_formed_subjects_and_the_api_still_serves(background: Background) -> None:
    background.run(_log_is_clean(background.nc))
    code, payload = background.run(_request(background.nc, "health", b"{}"))
    assert code is None and msgspec.json.decode(payload)


ID_COMMANDS = [["kill", "{id}", "--reason", "fuzz", "--actor", "alice", "--timeout", "15"],
               ["resume", "{id}", "--actor", "alice", "--timeout", "15"],
               ["set", "{id}", "--canary-pct", "5", "--actor", "alice", "--create", "--timeout", "15"],
               ["evaluate", "{id}", "--dry-run", "--timeout", "15"],
               ["events", "{id}", "--limit", "1"],
               ["status", "{id}"],
               ["consumer", "{id}", "--digest"],
               ["kill", "hostile-cli", "--reason", "fuzz", "--actor", "{id}", "--timeout", "15"]]


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.sampled_from(ID_COMMANDS), bad=st.sampled_from([s for s in INJECTIONS if s and "\x00" not in s]))
def test_cli_refuses_injected_ids_with_a_message(background: Background, command: list[str], bad: str) -> None:
    if is_token(bad):  # a valid token (reading "_x" is fine; creating it is the API's call)
        return
    argv = ["--nats-url", background.settings.nats_url, "--data-dir", background.settings.data_dir,
            *[part.replace("{id}", bad) for part in command]]
    err = io.StringIO()
    patient = {"ROLLOUT_CONNECT_TIMEOUT_S": "15"}  # a loaded machine must not turn a refusal into a timeout
    with mock.patch.dict(os.environ, patient), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # argparse refused it
            code = int(exc.code or 0)
    assert code == 2, (argv, code, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()
    assert "no NATS server answered" not in err.getvalue()  # refused for the id, not for want of a server
