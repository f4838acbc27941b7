"""The outbox relay: publish what a consumer committed, exactly once, and notice a stolen id.

A consumer commits its state, its position and the messages it emits (kill switches,
re-checks, dead letters...) in one SQLite transaction; this relay then publishes the
outbox rows and deletes the ones JetStream acknowledged. Every control command is signed
here (the engine passes its ``CommandSigner`` in: anything with :class:`Signer`'s
``headers``; see ``engine/sdk/signatures.py``). Each message goes out with
``Nats-Msg-Id`` = the engine's keyed id of the row's deterministic id (the engine passes
its :class:`~rollout_engine.engine.stack.msg_ids.EngineIds` in: anything with
:class:`MessageIds`'s ``of``), so a re-send is stored once.

A duplicate acknowledgement is therefore normal after a crash (the row was published,
the process died before deleting it) and suspicious otherwise: someone published under
that id first, and the engine's command was **not stored**. The relay tells them apart:

1. before publishing, it counts an attempt on every row (``outbox.attempts``, committed
   first): a duplicate for a row attempted before is its own earlier publish;
2. a duplicate for a row never attempted (a projection rebuilt from the log, a second
   engine process with the same key) is accepted only if the stored message at the
   acknowledged sequence is this very message (same subject, same bytes);
3. anything else is a **pre-empted** command: logged as an error, counted in
   ``rollout_consumer_relay_preempted_total{consumer}``, recorded under the KV key
   ``engine.relay.<consumer>`` (shown by ``rollout status``), and re-sent at once under
   a new id (the row's ``salt``), so the command still reaches the log. It is never
   counted as sent.

**Early publish** (:meth:`OutboxRelay.publish_early`): the runtime publishes what the
fold emits as soon as it is decided, before the batch's SQLite commit, under the same
id, so a kill does not wait for the rest of its batch and the commit. Rows JetStream
stored from that publish (:meth:`OutboxRelay.settle_early`) are not written to the
outbox; any other (no ack, a duplicate) is committed and relayed as above. A crash
before the commit refolds the same messages on restart, decides the same command with
the same id, and JetStream drops the re-send (docs/reliability.md, "Early publish").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import msgspec
from nats.js.errors import NotFoundError

from rollout_engine.consumers.deadletter import extra_headers
from rollout_engine.consumers.outbox import OutboxRow
from rollout_engine.consumers.store import SQLiteConsumerStore, fault_of
from rollout_engine.events import subjects

__all__ = ["MAX_RESENDS", "MessageIds", "OutboxRelay", "Preempted", "Signer"]


class MessageIds(Protocol):
    """How the engine turns a body id into a ``Nats-Msg-Id`` no producer can predict."""

    def of(self, body_id: str, salt: int = 0) -> str:
        ...


class Signer(Protocol):
    """How the engine signs what it publishes on ``ro.ctl.*.*`` (``engine/stack/signing.py``)."""

    def headers(self, subject: str, data: bytes) -> dict[str, str]:
        ...

log = logging.getLogger(__name__)

MAX_RESENDS = 3
"""New ids tried in one relay call after a pre-emption; later calls go on from there."""


class Preempted(msgspec.Struct, kw_only=True):
    """What ``engine.relay.<consumer>`` records: how many commands had their id taken, and the last one."""

    consumer: str
    preempted: int = 0
    last_id: str = ""
    last_subject: str = ""
    taken_by_subject: str = ""
    taken_at_seq: int = 0
    time_ms: int = 0


class OutboxRelay:
    """Publishes one consumer's outbox rows (see the module docstring)."""

    def __init__(self, name: str, store: SQLiteConsumerStore, ids: MessageIds, metrics: Any, signer: Signer) -> None:
        """``metrics``: the runtime's (``consumers.consumer.RuntimeMetrics``), for ``preempted``;
        ``signer``: signs every control command (services refuse unsigned ones in secure mode)."""
        self.name = name
        self.store = store
        self.ids = ids
        self.signer = signer
        self.metrics = metrics
        self.preempted = 0
        metrics.preempted.labels(name).inc(0)  # the series exists before the first event

    async def relay(self, js: Any, rows: list[OutboxRow]) -> None:
        """Publish ``rows``; delete what JetStream stored (or had stored from us); re-send what was pre-empted."""
        for _round in range(MAX_RESENDS + 1):
            if not rows:
                return
            rows = await self._publish(js, rows)

    async def _publish(self, js: Any, rows: list[OutboxRow]) -> list[OutboxRow]:
        """One round; returns the rows to re-send at once under a new id."""
        try:
            await self.store.mark_attempted([row.id for row in rows])
        except Exception as exc:  # not recorded: not published either, the rows stay
            if fault_of(exc) is None:
                raise
            log.warning("%s: could not record the relay attempt (%s); rows stay for the next attempt", self.name, exc)
            return []
        futures = []
        try:
            for row in rows:
                futures.append(await js.publish_async(row.subject, row.data, headers=self._headers(row)))
            done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        except Exception as exc:
            log.warning("%s: outbox relay failed (%s); rows stay for the next attempt", self.name, exc)
            return []
        sent: list[str] = []
        again: list[OutboxRow] = []
        for row, ack in zip(rows, done, strict=True):
            if isinstance(ack, BaseException):
                continue
            if not ack.duplicate or row.attempts > 0 or await self._stored_is_ours(js, row, ack):
                sent.append(row.id)
                continue
            again.append(await self._preempted(js, row, ack))
        try:
            await self.store.delete_outbox(sent)
        except Exception as exc:  # a store fault: the rows are relayed again later, JetStream drops the copies
            if fault_of(exc) is None:
                raise
            log.warning("%s: could not delete relayed outbox rows (%s); they will be relayed again", self.name, exc)
        return again

    def _headers(self, row: OutboxRow) -> dict[str, str]:
        return {**extra_headers(row), **self.signer.headers(row.subject, row.data),
                "Nats-Msg-Id": self.ids.of(row.id, row.salt)}

    async def publish_early(self, js: Any, rows: list[OutboxRow]) -> list[tuple[OutboxRow, Any]]:
        """Send ``rows`` now, before they are committed (see the module docstring); no wait
        for the acks: :meth:`settle_early` collects them before the commit."""
        sent: list[tuple[OutboxRow, Any]] = []
        for row in rows:
            try:
                sent.append((row, await js.publish_async(row.subject, row.data, headers=self._headers(row))))
            except Exception as exc:  # disconnected, too many pending: the outbox relays it after the commit
                log.debug("%s: early publish of %s failed (%s); relaying after the commit", self.name, row.id, exc)
                break
        return sent

    async def settle_early(self, sent: list[tuple[OutboxRow, Any]], timeout_s: float = 5.0) -> set[str]:
        """Ids of early-published rows JetStream stored as new messages: they need no outbox row.

        A duplicate answer is left to the outbox (its relay tells a re-send of our own from
        a pre-empted id, as for any row), and so is a publish not answered in ``timeout_s``.
        """
        if not sent:
            return set()
        try:
            acks = await asyncio.wait_for(asyncio.gather(*(f for _, f in sent), return_exceptions=True), timeout_s)
        except TimeoutError:
            return set()
        return {row.id for (row, _), ack in zip(sent, acks, strict=True)
                if not isinstance(ack, BaseException) and not ack.duplicate}

    async def _stored_is_ours(self, js: Any, row: OutboxRow, ack: Any) -> bool:
        """The message JetStream kept under this id is this row's (a rebuilt projection, a peer)."""
        try:
            stored = await js.get_msg(ack.stream, ack.seq)
        except NotFoundError:
            return False
        subject = stored.subject or ""
        same_subject = subject == row.subject or (subject.startswith(row.subject + ".")
                                                  and subject[len(row.subject) + 1:].isdigit())  # partition suffix
        return same_subject and (stored.data or b"") == row.data

    async def _preempted(self, js: Any, row: OutboxRow, ack: Any) -> OutboxRow:
        """Record a stolen id and give the row a new one."""
        taken_by = ""
        try:
            taken_by = (await js.get_msg(ack.stream, ack.seq)).subject or ""
        except Exception:  # gone or unreadable: the record says so
            taken_by = "?"
        self.preempted += 1
        self.metrics.preempted.labels(self.name).inc()
        log.error("%s: message %s for %s was NOT stored: JetStream answered 'duplicate' for an id this consumer never "
                  "published (seq %s holds %s). Another publisher used the engine's message id first, so the "
                  "message-id key may have leaked (docs/security.md, 'Pre-empted engine messages'); re-sending it "
                  "under a new id", self.name, row.id, row.subject, ack.seq, taken_by)
        salt = row.salt + 1
        await self.store.resalt(row.id, salt)
        await self._record(js, Preempted(consumer=self.name, last_id=row.id, last_subject=row.subject,
                                         taken_by_subject=taken_by, taken_at_seq=int(ack.seq),
                                         time_ms=time.time_ns() // 1_000_000))
        return OutboxRow(row.id, row.subject, row.data, row.headers, attempts=0, salt=salt)

    async def _record(self, js: Any, event: Preempted) -> None:
        """Add to the consumer's count in KV (``rollout status`` reads it); best effort."""
        key = subjects.engine_key("relay", self.name)
        try:
            kv = await js.key_value(subjects.STATE_BUCKET)
            try:
                previous = msgspec.json.decode((await kv.get(key)).value or b"{}", type=Preempted)
                event.preempted = previous.preempted + 1
            except Exception:
                event.preempted = 1
            await kv.put(key, msgspec.json.encode(event))
        except Exception as exc:
            log.warning("%s: could not record the pre-empted message in KV %s: %s", self.name, key, exc)
