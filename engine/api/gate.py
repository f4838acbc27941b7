"""The deployment gate: the engine's verdict over HTTP, in the shapes Argo Rollouts and Flagger call.

``rollout api`` serves it on ``Settings.gate_port`` (0: off) beside the NATS API, bound
like the engine: loopback by default; a non-loopback ``gate_host`` needs ``gate_token``.

Routes (read-only: nothing here changes a rollout; docs/integrations.md has the snippets):

``GET /v1/rollouts/<rollout>/verdict`` (POST too)
    Argo Rollouts' ``web`` metric provider. Always 200 with the verdict as JSON
    (:meth:`Verdict.body`): ``jsonPath: "{$.verdict}"`` with ``successCondition: result ==
    "advance"`` and ``failureCondition: result == "halt"``; anything else (``inconclusive``)
    is Argo's inconclusive measurement. Argo takes any non-2xx as a measurement *error*,
    so only what is not a verdict (404 unknown rollout, 401, 429) answers non-2xx.
``POST /v1/flagger/check``
    Flagger ``rollout`` / ``pre-rollout`` webhooks: 200 to advance, 409 to halt (a failed
    check). An inconclusive verdict answers 200: missing data must never count as a failed
    check (Flagger never resets them within a release).
``POST /v1/flagger/gate``
    Flagger ``confirm-rollout`` / ``confirm-promotion`` webhooks: 200 only on ``advance``;
    409 otherwise, which makes Flagger wait (no failed check) until the evidence is in.
``POST /v1/flagger/rollback``
    Flagger ``rollback`` webhook: 200 when the verdict is ``halt`` (Flagger then rolls back
    at once), 409 otherwise.
``GET /healthz``
    200 ``{"ok": true}``.

A Flagger body is ``{"name", "namespace", "phase", "checksum", "metadata"}``; the rollout
is ``metadata.rollout``, else the canary's ``name``. Credentials never travel in a URL:
a request with a query string is refused (400), the token goes in ``Authorization:
Bearer`` (Argo's ``headers`` with a secret) or in Flagger's ``metadata.token``.
Each client address gets a token bucket (``gate_rate_per_s``, ``gate_burst``); beyond it
429 with ``Retry-After``. Heads and bodies are bounded in size and time, connections
close after one answer, and at most 64 are served at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import Counter

from rollout_engine.engine.api.verdict import ADVANCE, HALT, UnknownRollout, Verdict, read_verdict
from rollout_engine.engine.settings import SettingsError
from rollout_engine.engine.stack.server import is_loopback
from rollout_engine.events.ids import is_token

__all__ = ["GATE_REQUESTS", "Gate", "GateError", "RateLimiter", "start_gate"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 64
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
GATE_REQUESTS = Counter("rollout_gate_requests", "Deployment-gate requests by route and HTTP status.",
                        ["route", "status"])
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 411: "Length Required", 413: "Content Too Large", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_json = msgspec.json.Encoder()


class GateError(Exception):
    """A request the gate refuses: HTTP ``status``, a message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RateLimiter:
    """One token bucket per client: ``rate`` requests/s on average, ``burst`` at once.

    At most ``max_clients`` buckets are kept (least recently seen dropped first), so a
    flood of source addresses costs bounded memory.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, client: str) -> float:
        """0 when ``client`` may go on (a token is taken), else seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class Request(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str


async def _read_request(reader: asyncio.StreamReader, client: str) -> Request:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        raise GateError(431, f"request head over {MAX_HEAD_BYTES} bytes") from None
    except (asyncio.IncompleteReadError, TimeoutError):
        raise GateError(400, "incomplete request head") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError:
        raise GateError(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or len(headers) >= MAX_HEADERS:
            raise GateError(400 if not sep else 431, "malformed or too many headers")
        headers[name.strip().lower()] = value.strip()
    if "?" in target or "#" in target:
        raise GateError(400, "the gate takes no query string: credentials never go in a URL (use the "
                             "Authorization header or Flagger's metadata.token), and the rollout is in the path")
    if "transfer-encoding" in headers:
        raise GateError(411, "send the body with a Content-Length (no chunked encoding)")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise GateError(400, "Content-Length is not a number") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise GateError(413, f"body over {MAX_BODY_BYTES} bytes")
    try:
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length else b""
    except (asyncio.IncompleteReadError, TimeoutError):
        raise GateError(400, "body shorter than its Content-Length") from None
    return Request(method.upper(), target, headers, body, client)


def _flagger_rollout(body: bytes) -> tuple[str, dict[str, Any]]:
    """The rollout a Flagger webhook asks about (``metadata.rollout``, else ``name``), and its metadata."""
    try:
        payload = msgspec.json.decode(body) if body.strip() else None
    except msgspec.DecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise GateError(400, 'expected Flagger\'s webhook JSON: {"name": ..., "namespace": ..., "phase": ..., '
                             '"metadata": {"rollout": ...}}')
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    rollout = metadata.get("rollout") or payload.get("name")
    return _check_rollout(rollout), metadata


def _check_rollout(rollout: Any) -> str:
    if not is_token(rollout) or str(rollout).startswith("_"):
        raise GateError(400, f"rollout: expected 1-64 of A-Z a-z 0-9 _ - (not starting with '_'), got {rollout!r}")
    return str(rollout)


class Gate:
    """The HTTP gate over one JetStream context (``read`` is replaceable for tests)."""

    def __init__(self, js: Any, *, token: str = "", rate_per_s: float = 5.0, burst: int = 20,
                 read: Callable[[Any, str], Awaitable[Verdict]] = read_verdict) -> None:
        self.js, self.token, self.read = js, token, read
        self.limiter = RateLimiter(rate_per_s, burst)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); return the bound port."""
        self.server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD_BYTES)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "local"
        route, status, body, headers = "?", 500, {"error": "internal error"}, {}
        try:
            if self._slots.locked():
                raise GateError(503, f"the gate serves {MAX_CONNECTIONS} connections at once; retry shortly")
            async with self._slots:
                request = await _read_request(reader, client)
                route = _route_name(request.path)
                status, body = await self.handle(request)
        except GateError as exc:
            status, body, headers = exc.status, {"error": exc.message}, exc.headers
        except Exception as exc:
            log.exception("gate: request failed")
            body = {"error": f"internal error: {type(exc).__name__}: {exc}"}
        GATE_REQUESTS.labels(route, str(status)).inc()
        with contextlib.suppress(Exception):
            await _respond(writer, status, body, headers)

    async def handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        """Route one request: (status, JSON body). Raises GateError for a refusal."""
        wait = self.limiter.wait_s(request.client)
        if wait > 0:
            raise GateError(429, f"rate limit: at most {self.limiter.rate:g} requests/s per client "
                                 f"(burst {self.limiter.burst}); retry in {wait:.1f}s",
                            {"Retry-After": str(max(1, math.ceil(wait)))})
        parts = request.path.strip("/").split("/")
        if parts == ["healthz"]:
            self._allow_methods(request, "GET")
            return 200, {"ok": True}
        if len(parts) == 4 and parts[:2] == ["v1", "rollouts"] and parts[3] == "verdict":
            self._allow_methods(request, "GET", "POST")
            self._authorize(request, {})
            return 200, (await self._verdict(_check_rollout(parts[2]))).body()
        if len(parts) == 3 and parts[:2] == ["v1", "flagger"] and parts[2] in ("check", "gate", "rollback"):
            self._allow_methods(request, "POST")
            rollout, metadata = _flagger_rollout(request.body)
            self._authorize(request, metadata)
            verdict = await self._verdict(rollout)
            passes = {"check": verdict.verdict != HALT, "gate": verdict.verdict == ADVANCE,
                      "rollback": verdict.verdict == HALT}[parts[2]]
            return (200 if passes else 409), verdict.body()
        raise GateError(404, f"no route {request.path!r}; routes: /v1/rollouts/<rollout>/verdict, "
                             "/v1/flagger/check, /v1/flagger/gate, /v1/flagger/rollback, /healthz")

    @staticmethod
    def _allow_methods(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise GateError(405, f"{request.method} is not allowed here; use {' or '.join(methods)} (the gate is read-only)",
                            {"Allow": ", ".join(methods)})

    def _authorize(self, request: Request, metadata: dict[str, Any]) -> None:
        if not self.token:
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:].strip() if bearer[:7].lower() == "bearer " else str(metadata.get("token") or "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise GateError(401, "missing or wrong token: send `Authorization: Bearer <gate_token>` "
                                 "(or metadata.token in a Flagger webhook)", {"WWW-Authenticate": "Bearer"})

    async def _verdict(self, rollout: str) -> Verdict:
        try:
            return await self.read(self.js, rollout)
        except UnknownRollout:
            raise GateError(404, f"unknown rollout {rollout!r}: nothing in the log; check the name "
                                 "(Flagger: metadata.rollout, else the canary's name)") from None


def _route_name(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "rollouts"]:
        return "verdict"
    if parts[:2] == ["v1", "flagger"] and len(parts) == 3 and parts[2] in ("check", "gate", "rollback"):
        return f"flagger_{parts[2]}"
    return "healthz" if parts == ["healthz"] else "other"


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = _json.encode(body)
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Cache-Control: no-store", "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def start_gate(js: Any, settings: Any) -> Gate | None:
    """Start the gate ``settings`` configure; None when it is off (``gate_port = 0``) or its
    port is taken. A taken port is logged, not fatal: the NATS API goes on serving (a second
    API instance on one host shares the API's load, not the gate's port)."""
    if not settings.gate_port:
        return None
    if not is_loopback(settings.gate_host) and not settings.gate_token:
        raise SettingsError(f"refusing to serve the gate on {settings.gate_host} without a token: set gate_token "
                            "(ROLLOUT_GATE_TOKEN) or keep gate_host on loopback (docs/integrations.md)")
    gate = Gate(js, token=settings.gate_token, rate_per_s=settings.gate_rate_per_s, burst=settings.gate_burst)
    try:
        gate.port = await gate.start(settings.gate_host, settings.gate_port)
    except OSError as exc:
        log.error("gate: cannot listen on %s:%s (%s); the NATS API goes on without it",
                  settings.gate_host, settings.gate_port, exc)
        return None
    log.info("gate: serving on http://%s:%d", settings.gate_host, gate.port)
    return gate
