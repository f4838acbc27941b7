"""The operator API's client: one request to one endpoint of the ``rollout-api`` service.

The CLI, the demo and scripts call the API through :func:`call`, so they share the
service's validations and audit trail; importing it loads nothing of the engine's
statistics (the service itself is ``engine.api.service``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from rollout_engine.engine.api.requests import ApiError
from rollout_engine.events import subjects

__all__ = ["ENDPOINTS", "NO_API", "ApiError", "call"]

ENDPOINTS = ("status", "rollback", "resume", "evaluate", "config", "health",
             "abort", "retry", "promote", "pause", "unpause", "clear_escalation")
"""The endpoints on ``ro.api.<endpoint>``. ``abort`` is the operator's kill (``events.transitions.kill``;
``rollout kill`` is its CLI alias); ``rollback`` is its older name, kept for existing clients (no
``action`` recorded); the verbs from ``abort`` on live in ``engine/api/verbs.py``."""

NO_API = "no rollout API is running"
"""How a refusal for want of any API begins (a 503 of a running but busy API does not)."""

_json = msgspec.json.Encoder()


async def call(nc: Client, endpoint: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Request one endpoint; raise :class:`ApiError` with the service's message on refusal."""
    if endpoint not in ENDPOINTS:
        raise ApiError(400, f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    try:
        msg = await nc.request(subjects.api(endpoint), _json.encode(payload or {}), timeout=timeout)
    except NoRespondersError:
        raise ApiError(503, f"{NO_API}; start it with `rollout up` (or `rollout api`)") from None
    except NatsTimeout:
        raise ApiError(503, f"the rollout API did not answer {endpoint!r} within {timeout:g}s") from None
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise ApiError(int(headers["Nats-Service-Error-Code"]), headers.get("Nats-Service-Error", "error"))
    return msgspec.json.decode(msg.data)
