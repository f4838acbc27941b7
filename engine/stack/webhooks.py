"""The notifier's edge: POST each owed delivery to its webhook, record the outcome in the log.

:class:`consumers.notifier.NotifierProjection` folds the log into *intents* (the
commands that still owe each webhook a delivery). :class:`Deliverer` is the only part
that touches HTTP and the wall clock:

* per webhook, strictly in log order (a kill is never announced after the resume that
  followed it), it POSTs the oldest owed command once due: at once for a first attempt,
  then after ``notify_backoff_s`` doubling up to ``notify_backoff_max_s``;
* it publishes the outcome as a :class:`events.Notification` on
  ``ro.ctl.<rollout>.notification`` with a deterministic id, published under the
  engine's keyed ``Nats-Msg-Id`` (no producer can burn it first); the fold
  reads it back, so a restarted notifier knows every delivery and every attempt made;
* after ``notify_max_attempts`` failures it records ``dead`` and parks the command in
  the dead letters (``ro.dlq.notifier``, reason and webhook in the envelope), which the
  ``RolloutDeadLetters`` alert reports; the queue of that webhook moves on.

Exactly once per command and webhook: nothing is posted before the fold has caught up
with everything a previous process published (its delivery records included), and
nothing is posted twice by one process. The one gap no HTTP client can close is a crash
between a 2xx and the record of it: the delivery is then repeated with the same
``X-Rollout-Delivery-Id`` (also sent as ``Idempotency-Key``), which a receiver can use to
drop it.

Bodies: ``json`` is ``{"delivery_id", "webhook", "rollout", "kind", "seq", "text",
"event"}`` with the whole command as ``event``; ``slack`` is ``{"text"}``, which Slack's
incoming webhooks and compatible receivers (Mattermost, Rocket.Chat) display.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import msgspec

from rollout_engine.consumers.deadletter import DeadLetter
from rollout_engine.consumers.notifier import Intent, NotifierProjection
from rollout_engine.engine.settings import Settings, Webhook
from rollout_engine.events import Notification, command_id, decode, encode, subjects

__all__ = ["Deliverer", "body_of", "post", "summary_of"]

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_envelope = msgspec.msgpack.Encoder()
_ICONS = {"kill_switch": ":rotating_light:", "resume": ":white_check_mark:", "escalation": ":warning:"}


def summary_of(event: Any) -> str:
    """One line for people: what happened to which rollout, by whom, and why."""
    kind = type(event).__struct_config__.tag
    if kind == "kill_switch":
        what = "aborted by an operator" if event.producer == "api" else "killed by the rollback consumer"
        head = f"Kill switch on {event.rollout}: {what} ({event.actor})"
    elif kind == "resume":
        verb = "retried from the first step" if event.action == "retry" else "resumed"
        head = f"{event.rollout} {verb} at {event.after.canary_pct:g}% by {event.actor}"
    else:
        head = f"Escalation on {event.rollout}: {event.trigger} ({event.count} breaches)"
    return f"{head}: {event.reason}"[:3000]


def body_of(webhook: Webhook, intent: Intent, delivery_id: str) -> bytes:
    """The JSON body of one delivery in the webhook's format."""
    event = decode(intent.data)
    text = summary_of(event)
    if webhook.format == "slack":
        return _json.encode({"text": f"{_ICONS.get(intent.kind, '')} {text}".strip()})
    return _json.encode({"delivery_id": delivery_id, "webhook": webhook.name, "rollout": intent.rollout,
                         "kind": intent.kind, "seq": intent.seq, "text": text, "event": msgspec.to_builtins(event)})


def post(webhook: Webhook, body: bytes, delivery_id: str) -> str | None:
    """POST ``body``; None on a 2xx, else what went wrong (blocking: run it in a thread)."""
    headers = {"Content-Type": "application/json", "User-Agent": "rollout-engine-notifier",
               "X-Rollout-Delivery-Id": delivery_id, "Idempotency-Key": delivery_id, **webhook.headers}
    request = urllib.request.Request(webhook.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=webhook.timeout_s) as response:
            response.read(65536)
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"[:200]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"[:200]


class Deliverer:
    """Runs beside the notifier's runtime loop (its hooks start, wake and stop it)."""

    def __init__(self, projection: NotifierProjection, settings: Settings) -> None:
        self.projection = projection
        self.settings = settings
        self.webhooks = list(settings.webhooks)
        self.caught_up = False
        self._start_seq: int | None = None
        self._done: dict[tuple[str, str], tuple[int, float, bool]] = {}  # (command, webhook) -> attempts, last, final
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.posts = 0

    # --- runtime hooks ----------------------------------------------------------------------
    async def on_start(self, runner: Any) -> None:
        if self.webhooks:
            self._task = asyncio.create_task(self._run(runner))

    async def after_commit(self, runner: Any, result: Any) -> None:
        self._check_caught_up(runner)
        self._wake.set()

    async def on_stop(self, runner: Any) -> None:
        if self._task is not None:
            # The flag as well as the cancel: on Python 3.11 a wait_for whose event was set
            # in the same loop turn as the cancel returns instead of raising, and the
            # cancel is lost (the loop would run on and on_stop never return).
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _check_caught_up(self, runner: Any) -> None:
        if not self.caught_up and self._start_seq is not None and runner.folder.seq >= self._start_seq:
            self.caught_up = True
            log.info("notifier: caught up at sequence %d; delivering to %s", runner.folder.seq,
                     ", ".join(w.name for w in self.webhooks) or "no webhook")

    # --- the delivery loop ------------------------------------------------------------------
    async def _run(self, runner: Any) -> None:
        while self._start_seq is None:  # every record an earlier process made is at or below it
            try:
                self._start_seq = int((await runner.js.stream_info(subjects.LOG_STREAM)).state.last_seq)
            except Exception as exc:
                log.warning("notifier: stream info failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self._check_caught_up(runner)
        while not self._stopping:
            wait_s = 1.0
            if self.caught_up:
                for webhook in self.webhooks:
                    try:
                        wait_s = min(wait_s, await self._deliver_next(runner, webhook))
                    except Exception:  # one webhook's trouble never stops the others
                        log.exception("notifier: delivering to %s failed", webhook.name)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait_s, 0.05))

    def _state(self, intent: Intent, webhook: Webhook) -> tuple[int, float, bool]:
        """Attempts, last attempt (s) and finality: the fold's, or this process's own if newer."""
        folded = intent.targets.get(webhook.name)
        mine = self._done.get((intent.command_id, webhook.name))
        attempts, last_s, final = (folded.attempts, folded.last_ms / 1000, bool(folded.final)) if folded else (0, 0.0, False)
        if mine is not None and (mine[2] or mine[0] > attempts):
            return mine
        return attempts, last_s, final

    def backoff_s(self, attempts: int) -> float:
        """Wait after ``attempts`` failed attempts (doubling, capped)."""
        return min(self.settings.notify_backoff_s * 2 ** max(attempts - 1, 0), self.settings.notify_backoff_max_s)

    async def _deliver_next(self, runner: Any, webhook: Webhook) -> float:
        """Deliver this webhook's oldest owed command if due; return seconds until the next try."""
        now = time.time()
        for intent in self.projection.owed(webhook.name, frozenset(webhook.events)):
            attempts, last_s, final = self._state(intent, webhook)
            if final:
                continue
            if attempts == 0 and now - intent.time_ms / 1000 > self.settings.notify_max_age_s:
                self._done[(intent.command_id, webhook.name)] = (0, now, True)
                log.info("notifier: not sending %s %s (seq %d) to %s: older than notify_max_age_s",
                         intent.kind, intent.command_id, intent.seq, webhook.name)
                continue
            due = last_s + self.backoff_s(attempts) if attempts else 0.0
            if due > now:
                return due - now  # strictly in order: a later command waits for this one
            await self._attempt(runner, webhook, intent, attempts + 1)
            return 0.0
        return 1.0

    async def _attempt(self, runner: Any, webhook: Webhook, intent: Intent, attempt: int) -> None:
        delivery_id = command_id("notify", webhook.name, intent.command_id)
        error = await asyncio.to_thread(post, webhook, body_of(webhook, intent, delivery_id), delivery_id)
        self.posts += 1
        now = time.time()
        if error is None:
            status = "delivered"
        elif attempt >= self.settings.notify_max_attempts:
            status = "dead"
        else:
            status = "failed"
        self._done[(intent.command_id, webhook.name)] = (attempt, now, status != "failed")
        if error is not None:
            log.warning("notifier: %s to %s, attempt %d/%d: %s", intent.command_id, webhook.name, attempt,
                        self.settings.notify_max_attempts, error)
        record = Notification(
            id=command_id("notification", delivery_id, status, attempt), rollout=intent.rollout,
            time_ms=int(now * 1000), producer="notifier", actor="notifier", target=webhook.name,
            command_id=intent.command_id, command_kind=intent.kind, delivery_id=delivery_id, status=status,  # type: ignore[arg-type]
            attempt=attempt, detail=error or "")
        if status == "dead":
            await self._dead_letter(runner, webhook, intent, attempt, error or "")
        subject, data = subjects.control(intent.rollout, "notification"), encode(record)
        await self._publish(runner, subject, data,
                            {**runner.relay.ids.headers(record.id), **runner.relay.signer.headers(subject, data)})

    async def _dead_letter(self, runner: Any, webhook: Webhook, intent: Intent, attempts: int, error: str) -> None:
        reason = f"webhook {webhook.name}: {attempts} attempts failed, the last with {error}"
        letter = DeadLetter(consumer=runner.name, seq=intent.seq, subject=subjects.control(intent.rollout, intent.kind),
                            field="webhook", reason=reason, data=intent.data)
        headers = {"Nats-Msg-Id": f"dlq-{runner.name}-{intent.seq}-{webhook.name}", "Ro-Reason": reason[:500],
                   "Ro-Stream-Seq": str(intent.seq)}
        await self._publish(runner, subjects.dlq(runner.name), _envelope.encode(letter), headers)

    async def _publish(self, runner: Any, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish until JetStream acknowledges: a record lost would mean a repeated POST."""
        delay = 0.1
        while True:
            try:
                await runner.js.publish(subject, data, headers=headers, timeout=5)
                return
            except Exception as exc:
                log.warning("notifier: could not record on %s (%s); retrying", subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
