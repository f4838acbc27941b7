"""Sending the operator API's replies: the one wrapper every endpoint runs in.

It turns a refusal (``ApiError``, a bad event, input nested too deep) into a NATS micro
error reply with the message in the body, logs an unexpected failure as a 500, and
checks the encoded reply against the server's ``max_payload`` (the server INFO nats-py
keeps as ``nc.max_payload``) before sending it. A reply over it could not be published
at all: the client would wait out its timeout and learn nothing. It gets a 413 instead
that names the endpoint, the size, the limit and what to ask for (for ``status``: a
smaller page).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.micro.request import Request

from rollout_engine.engine.api.requests import MAX_DEPTH, ApiError, parse_body
from rollout_engine.events.errors import EventError

__all__ = ["HEADROOM", "endpoint", "too_large"]

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


def endpoint(name: str, func: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
             nc: Client) -> Callable[[Request], Awaitable[None]]:
    """``func`` (request body -> reply) as the micro handler of endpoint ``name`` on ``nc``."""

    async def handle(request: Request) -> None:
        try:
            reply = await func(parse_body(request.data))
        except ApiError as exc:
            await _refuse(request, exc.code, exc.message)
            return
        except EventError as exc:
            await _refuse(request, 400, str(exc))
            return
        except RecursionError:  # input that nests too deep for some step: the client's to fix
            await _refuse(request, 400, f"request nests too deep to process; keep objects and arrays within "
                                        f"{MAX_DEPTH} levels")
            return
        except Exception as exc:
            log.exception("api %s failed", name)
            await _refuse(request, 500, f"internal error: {type(exc).__name__}: {exc}")
            return
        data = _json.encode(reply)
        if len(data) > nc.max_payload - HEADROOM:
            log.warning("api %s: reply of %d bytes is over the server's max_payload (%d); refused", name,
                        len(data), nc.max_payload)
            await _refuse(request, 413, too_large(name, len(data), nc.max_payload))
            return
        await request.respond(data)

    return handle


HEADROOM = 1024
"""Bytes kept free under ``max_payload`` for the reply's subject and headers."""


def too_large(endpoint: str, size: int, limit: int) -> str:
    """The refusal of a reply the server would not carry: which endpoint, how big, the
    limit, and what to ask for instead."""
    what = ("ask for a smaller page: `rollout status --limit N` (API: \"limit\"), and follow next_cursor "
            "(`--cursor`, or `--all` for every page)" if endpoint == "status" else
            "ask for less in one request")
    return (f"{endpoint}: the reply is {size:,} bytes, over the NATS server's max_payload of {limit:,} bytes "
            f"(less {HEADROOM} for headers), so it cannot be sent; {what}")


async def _refuse(request: Request, code: int, message: str) -> None:
    await request.respond_error(str(code), message, data=_json.encode({"error": message, "code": code}))
