"""RolloutClient: the producer SDK services use to take part in a rollout.

::

    async with RolloutClient(load_settings(), producer="checkout") as client:
        variant = client.assign("checkout-v2", user_id)          # sync, no network
        result = await client.shadow("checkout-v2", user_id, baseline=v1, candidate=v2)
        await client.record_outcome("checkout-v2", decision_id, variant, "win")

* ``assign``/``decide`` hash the unit into a bucket (``engine.assignment``) against the
  live control state held in memory, build the Decision and buffer it: no round trip.
* Control state follows the log: an ordered JetStream consumer on ``ro.ctl.>`` (deliver
  last per subject) is read up to its end before :meth:`start` returns, then pushes
  every kill switch, resume and config change as it is published. Each command carries
  the full state after it, so the latest one per rollout is the state
  (``consumers.control.apply_command``, the same fold the control consumer runs).
  The follower is a *named* ephemeral consumer (``sdk-<producer>-<random>``), created
  through the filtered create subject ``$JS.API.CONSUMER.CREATE.RO_LOG.<name>.ro.ctl.>``,
  so the ``app`` role needs no unfiltered create (which could retarget the engine's
  durables: docs/security.md). Every (re)subscription and every ordered-consumer reset
  takes a fresh name; old ones expire after ``FOLLOWER_INACTIVE_S``.
* Events go through ``engine.publisher`` (batches, acks, dedupe ids, SQLite outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from rollout_engine.consumers.control import apply_command
from rollout_engine.engine.bus import BusUnavailable, connect
from rollout_engine.engine.sdk import client_metrics as m
from rollout_engine.engine.sdk.acks import AckReporter
from rollout_engine.engine.sdk.assignment import Split, bucket, split_of
from rollout_engine.engine.sdk.outbox import Outbox
from rollout_engine.engine.sdk.publisher import BatchPublisher, BufferFull
from rollout_engine.engine.sdk.shadow import Differ, Observed, compare, invoke, observe
from rollout_engine.engine.settings import Settings, load_settings
from rollout_engine.events import (
    ControlState,
    Decision,
    Event,
    EventError,
    Metric,
    Outcome,
    ShadowResult,
    decode_from_log,
    subjects,
    validate,
)
from rollout_engine.events.ids import check_token, new_event_id

__all__ = ["BufferFull", "RolloutClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")
OnChange = Callable[[str, ControlState], Any]

_UNIT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_DEFAULT_STATE = ControlState()
_DEFAULT_SPLIT = split_of(_DEFAULT_STATE)
_FAILED = object()
"""Marks a served variant that raised (its exception went to the caller)."""
METRICS_INTERVAL_S = 1.0
FOLLOWER_INACTIVE_S = 10.0
"""A control follower the SDK left (reset, reconnect, exit) is deleted by the server after this."""


class RolloutClient:
    """Async producer client; use as ``async with RolloutClient(...) as client``.

    Args:
        settings: engine settings (NATS URL, credentials, data dir); default: load_settings().
        producer: this service's name, stamped on every event (a token).
        outbox_path: SQLite outbox file; default ``<data_dir>/outbox-<producer>.sqlite``.
            Give each process its own file; a restarted process drains what it left.
        batch_size, linger_s: a batch is sent at ``batch_size`` events or ``linger_s``
            after its first event, whichever comes first (defaults: 250, 5 ms).
        max_buffered: events held in memory at most; see ``BufferFull``.
        buffer_timeout_s: how long the async ``record_*`` methods wait for space.
        ack_timeout_s: a batch not acked within it goes to the outbox.
        on_change: ``callback(rollout, state)`` (sync or async): once per rollout with its
            current state when the log has been read at start (or after a reconnect, for
            the rollouts whose state moved meanwhile), then after each change.
        allow_offline: start even if NATS is unreachable, serving the safe default state
            (everyone on the baseline) and recording into the outbox until NATS answers.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        producer: str = "sdk",
        outbox_path: str | Path | None = None,
        batch_size: int = 250,
        linger_s: float = 0.005,
        max_buffered: int = 100_000,
        buffer_timeout_s: float = 5.0,
        ack_timeout_s: float = 2.0,
        catch_up_timeout_s: float = 5.0,
        on_change: OnChange | None = None,
        allow_offline: bool = False,
    ) -> None:
        self.settings = settings or load_settings()
        self.producer = check_token(producer, "producer")
        self.outbox_path = Path(outbox_path or self.settings.data_path / f"outbox-{producer}.sqlite")
        self.on_change = on_change
        self.allow_offline = allow_offline
        self._publisher_args = {
            "batch_size": batch_size,
            "linger_s": linger_s,
            "max_buffered": max_buffered,
            "ack_timeout_s": ack_timeout_s,
        }
        self.buffer_timeout_s = buffer_timeout_s
        self.catch_up_timeout_s = catch_up_timeout_s
        self._states: dict[str, ControlState] = {}
        self._splits: dict[str, Split] = {}
        self._selections: dict[tuple[str, str, str], int] = {}
        self._state_seq: dict[str, int] = {}
        self._synced = False
        self._generation = 0
        self._subjects: dict[tuple[str, str], str] = {}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Any = None
        self._publisher: BatchPublisher | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._housekeeping: set[asyncio.Future[Any]] = set()
        self._metrics_task: asyncio.Future[None] | None = None
        self._acks = AckReporter(self, self._jetstream)  # revisions applied -> KV ro_acks (engine/sdk/acks.py)

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> RolloutClient:
        """Open the outbox, connect, and read the control state up to the end of the log."""
        outbox = await Outbox.open(self.outbox_path)
        self._publisher = BatchPublisher(outbox, self._jetstream, **self._publisher_args)  # type: ignore[arg-type]
        self._metrics_task = asyncio.ensure_future(self._metrics_loop())
        try:
            await self._connect()
        except BusUnavailable:
            if not self.allow_offline:
                await self.close(0)
                raise
            log.warning("rollout SDK: NATS unreachable, starting offline (baseline only, outbox on)")
            self._spawn(self._connect_later(), wait_on_close=False)
        return self

    async def _connect(self) -> None:
        self._nc = await connect(self.settings, name=f"sdk-{self.producer}", on_event=self._on_bus_event)
        self._js = self._nc.jetstream()
        try:
            await self._follow_control(wait=True)
            self._synced = True
        except BaseException:
            nc, self._nc, self._js = self._nc, None, None
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._acks.start()
        assert self._publisher is not None
        self._publisher.kick()

    async def _connect_later(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._connect()
                log.info("rollout SDK: connected; draining the outbox")
                return
            except BusUnavailable:
                continue
            except Exception:
                log.exception("rollout SDK: connecting failed; retrying")

    async def _on_bus_event(self, kind: str) -> None:
        if kind == "disconnected" and self._publisher is not None:
            self._publisher.connection_lost()
        if kind == "reconnected":
            # The server may have restarted and lost our ephemeral consumer: subscribe
            # anew (last per subject), then push the outbox.
            self._spawn(self._follow_control(wait=False), wait_on_close=False)
            if self._publisher is not None:
                self._publisher.kick()

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL_S)
            self.sync_metrics()

    def sync_metrics(self) -> None:
        """Move the selection counts kept on the hot path into ``rollout_selection_total``
        (done every second; a dict increment costs a fifth of a labelled Counter.inc())."""
        counts, self._selections = self._selections, {}
        for (rollout, variant, reason), n in counts.items():
            m.selection_counter(rollout, variant, reason).inc(n)

    async def close(self, timeout: float = 10.0) -> None:
        """Finish shadow runs, flush every buffered event (to NATS, else the outbox), close."""
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            self._metrics_task = None
        self.sync_metrics()
        for task in list(self._background):
            if task in self._housekeeping:
                task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
        for task in list(self._background):
            task.cancel()
        await self._acks.close()
        if self._publisher is not None:
            await self._publisher.close(timeout)
            await self._publisher.outbox.close()
            self._publisher = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def __aenter__(self) -> RolloutClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any], *, wait_on_close: bool = True) -> None:
        """Run ``coro`` in the background; close() waits for it (shadow runs, callbacks)
        or cancels it (``wait_on_close=False``: reconnect housekeeping)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if not wait_on_close:
            self._housekeeping.add(task)
            task.add_done_callback(self._housekeeping.discard)

    def _jetstream(self) -> JetStreamContext | None:
        nc = self._nc
        return self._js if nc is not None and nc.is_connected else None

    # --- control state ----------------------------------------------------------------
    async def _follow_control(self, *, wait: bool) -> None:
        assert self._js is not None
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        caught_up = asyncio.Event()
        # A new subscription re-delivers the last command of every subject. Messages of
        # an older subscription are ignored from now on, and sequences start afresh (the
        # stream may have been recreated with new numbers).
        self._generation += 1
        generation = self._generation
        self._state_seq = {}
        # Until it has caught up, the subscription folds into a staging copy: the last
        # config, kill switch and resume of a rollout arrive one after the other, and
        # only the newest is the rollout's state. Folding them live would make every
        # new instance see (and report through on_change) a kill that was lifted long
        # ago, and would flip assign() on a reconnect.
        staging: dict[str, ControlState] = {}
        staging_seq: dict[str, int] = {}

        def finish_catch_up() -> None:
            if caught_up.is_set():
                return
            caught_up.set()
            self._adopt(staging, staging_seq)
            self._acks.caught_up()

        async def on_message(msg: Msg) -> None:
            if generation != self._generation:
                return
            meta = msg.metadata
            if caught_up.is_set():
                self._fold(msg.subject, msg.data, meta.sequence.stream)
                self._acks.observe(msg)
                return
            _fold_into(staging, staging_seq, msg.subject, msg.data, meta.sequence.stream)
            if meta.num_pending == 0:
                finish_catch_up()

        try:
            # A named consumer: nats-py creates it through the filtered create subject,
            # the only one the `app` role may use (engine/stack/security.py).
            self._sub = await self._js.subscribe(
                subjects.CONTROL_ALL,
                stream=subjects.LOG_STREAM,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                idle_heartbeat=2.0,
                config=ConsumerConfig(name=self._follower_name(), inactive_threshold=FOLLOWER_INACTIVE_S),
            )
            _fresh_name_on_reset(self._sub, self._follower_name)
            info = await self._sub.consumer_info()
        except Exception as exc:
            if not wait:
                log.warning("rollout SDK: could not follow control subjects: %s", exc)
                return
            raise BusUnavailable(
                f"cannot follow control commands on stream {subjects.LOG_STREAM} ({exc}); "
                "has `rollout up` provisioned the streams?"
            ) from None
        if info.num_pending == 0 and info.delivered.consumer_seq == 0:
            finish_catch_up()
        if wait:
            try:
                await asyncio.wait_for(caught_up.wait(), self.catch_up_timeout_s)
            except TimeoutError:
                raise BusUnavailable(
                    f"control state not read within {self.catch_up_timeout_s}s "
                    f"({info.num_pending} commands pending); the server may be overloaded"
                ) from None

    def _follower_name(self) -> str:
        """A consumer name no one else uses: ``sdk-<producer>-<48 random bits>``."""
        return f"sdk-{self.producer}-{secrets.token_hex(6)}"

    def _fold(self, subject: str, data: bytes, seq: int) -> None:
        """Fold one live control message: each change is applied and reported at once."""
        for event in _decode_control(subject, data, seq):
            if seq <= self._state_seq.get(event.rollout, 0):
                continue  # never let an older command overwrite a newer state
            new_state = apply_command(self._states, event)
            if new_state is None:
                continue
            self._state_seq[event.rollout] = seq
            self._splits[event.rollout] = split_of(new_state)
            self._notify(event.rollout, new_state)

    def _adopt(self, staging: dict[str, ControlState], staging_seq: dict[str, int]) -> None:
        """Take the states a subscription read up to the end of the log; report each
        rollout whose state differs from the one held (once, with its current state)."""
        for rollout, state in sorted(staging.items()):
            self._state_seq[rollout] = staging_seq[rollout]
            if self._states.get(rollout) == state:
                continue
            self._states[rollout] = state
            self._splits[rollout] = split_of(state)
            self._notify(rollout, state)

    def _notify(self, rollout: str, state: ControlState) -> None:
        if self.on_change is None:
            return
        try:
            result = self.on_change(rollout, state)
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:
            log.exception("rollout SDK: on_change callback failed")

    def state(self, rollout: str) -> ControlState:
        """The rollout's current control state (the safe default before any command)."""
        return self._states.get(rollout, _DEFAULT_STATE)

    def control_seq(self, rollout: str) -> int:
        """Log sequence of the command that set :meth:`state` (0: no command seen yet)."""
        return self._state_seq.get(rollout, 0)

    @property
    def connected(self) -> bool:
        """True while NATS is connected; False offline or reconnecting (state may be stale)."""
        return self._jetstream() is not None

    @property
    def synced(self) -> bool:
        """True once the control log was read to its end: :meth:`state` is then the
        engine's (possibly stale while not :attr:`connected`), not an offline default."""
        return self._synced

    # --- assignment -------------------------------------------------------------------
    def _subject(self, rollout: str, kind: str) -> str:
        key = (rollout, kind)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self._subjects[key] = subjects.event(rollout, kind)  # validates the rollout id
        return subject

    def _publisher_or_raise(self) -> BatchPublisher:
        if self._publisher is None:
            raise RuntimeError("RolloutClient is not started: use `async with RolloutClient(...)` or await start()")
        return self._publisher

    def decide(self, rollout: str, unit: str, *, context: str | None = None, decision_id: str | None = None) -> Decision:
        """Choose the unit's variant, buffer the Decision, and return it (``.variant``,
        ``.id`` to join outcomes, ``.reason``, ``.propensity``). Synchronous, no I/O.

        Raises EventError for a bad rollout or unit id, BufferFull when publishing is behind.
        """
        publisher = self._publisher_or_raise()
        decision, subject, _ = self._decision(rollout, unit, context, decision_id)
        publisher.add(decision, subject)
        key = (rollout, decision.variant, decision.reason)
        self._selections[key] = self._selections.get(key, 0) + 1  # to Prometheus every second
        return decision

    def _decision(
        self, rollout: str, unit: str, context: str | None, decision_id: str | None
    ) -> tuple[Decision, str, ControlState]:
        subject = self._subject(rollout, "decision")
        if type(unit) is not str or _UNIT.fullmatch(unit) is None:
            raise EventError("unit", f"expected 1-256 printable characters, got {unit!r}")
        if context is not None:
            check_token(context, "context")
        if decision_id is not None:
            check_token(decision_id, "decision_id")
        state = self._states.get(rollout, _DEFAULT_STATE)
        choice = self._splits.get(rollout, _DEFAULT_SPLIT).pick(bucket(rollout, unit))
        now = time.time_ns() // 1_000_000
        decision = Decision(
            id=decision_id or new_event_id(now),
            rollout=rollout,
            time_ms=now,
            producer=self.producer,
            unit=unit,
            variant=choice.variant,
            reason=choice.reason,
            canary_pct=state.canary_pct,
            config_version=state.config_version,
            propensity=choice.propensity,
            context=context,
        )
        return decision, subject, state

    def assign(self, rollout: str, unit: str, *, context: str | None = None) -> str:
        """The variant serving ``unit`` in ``rollout`` (see :meth:`decide`)."""
        return self.decide(rollout, unit, context=context).variant

    async def choose(
        self, rollout: str, unit: str, *, context: str | None = None, mode: Any = None,
        priority: float = 0.0, risk: str = "low",
    ) -> Any:
        """Pick a bandit arm locally and buffer its Decision (reason ``bandit``,
        ``forced_safe`` or ``disabled``, with its propensity; safe mode is ``dry_run``).

        Returns an ``engine.choice.Choice`` (``.variant``, ``.decision_id`` to join the
        outcome, ``.mode``, ``.execute``). The first call for a rollout starts a KV watch
        of ``bandit.<rollout>``; later calls do no I/O. Raises ``NoBanditState`` until the
        bandit consumer has published the rollout (docs/bandit.md).
        """
        from rollout_engine.engine.sdk.choice import BanditChooser

        chooser = self.__dict__.setdefault("_bandit", BanditChooser())
        watched = self.__dict__.setdefault("_bandit_watched", set())
        js = self._jetstream()
        if rollout not in watched and js is not None:
            watched.add(rollout)
            await chooser.watch(js, rollout)
        subject = self._subject(rollout, "decision")
        if type(unit) is not str or _UNIT.fullmatch(unit) is None:
            raise EventError("unit", f"expected 1-256 printable characters, got {unit!r}")
        if context is not None:
            check_token(context, "context")
        choice = chooser.choose(rollout, unit, context=context, mode=mode, priority=priority, risk=risk)
        state = self.state(rollout)
        decision = chooser.decision(choice, producer=self.producer, canary_pct=state.canary_pct,
                                    config_version=state.config_version)
        self._publisher_or_raise().add(decision, subject)
        key = (rollout, decision.variant, decision.reason)
        self._selections[key] = self._selections.get(key, 0) + 1
        return choice

    # --- shadow compare ---------------------------------------------------------------
    async def shadow(
        self,
        rollout: str,
        unit: str,
        *,
        baseline: Callable[[], T | Awaitable[T]],
        candidate: Callable[[], T | Awaitable[T]],
        differ: Differ | None = None,
        timeout: float = 1.0,
        context: str | None = None,
        decision_id: str | None = None,
    ) -> T:
        """Run the selected variant and, beside it, the other one; return the selected result.

        The Decision (with ``ShadowResult``: diff dimensions or the shadow's error) is
        emitted once the shadow finished or timed out, in the background: a slow shadow
        never delays the caller, a failing one never fails it. Under the kill switch the
        candidate does not run at all. Pass ``decision_id`` to join outcomes later.
        """
        publisher = self._publisher_or_raise()
        decision, subject, state = self._decision(rollout, unit, context, decision_id)
        key = (rollout, decision.variant, decision.reason)
        self._selections[key] = self._selections.get(key, 0) + 1
        if state.kill_switch:
            await publisher.add_wait(decision, subject, self.buffer_timeout_s)
            return await invoke(baseline)
        serving_candidate = decision.reason == "canary"
        selected, other = (candidate, baseline) if serving_candidate else (baseline, candidate)
        other_name = state.baseline if serving_candidate else state.candidate
        shadow_task = asyncio.ensure_future(observe(other, timeout))
        try:
            result = await invoke(selected)
        except BaseException:
            self._spawn(self._emit_shadowed(decision, subject, shadow_task, other_name, _FAILED, serving_candidate, differ))
            raise
        self._spawn(self._emit_shadowed(decision, subject, shadow_task, other_name, result, serving_candidate, differ))
        return result

    async def _emit_shadowed(
        self,
        decision: Decision,
        subject: str,
        shadow_task: asyncio.Future[Observed],
        shadow_variant: str,
        selected_result: Any,
        serving_candidate: bool,
        differ: Differ | None,
    ) -> None:
        observed = await shadow_task
        if selected_result is _FAILED:  # nothing to compare with: record the shadow alone
            result = ShadowResult(variant=shadow_variant, latency_ms=observed.latency_ms)
            if observed.error is not None:
                result = compare(shadow_variant, observed, None, None)
        else:
            base, cand = (observed.result, selected_result) if serving_candidate else (selected_result, observed.result)
            result = compare(shadow_variant, observed, base, cand, differ)
        if result.error is not None:
            m.SHADOW_ERRORS.labels(decision.rollout).inc()
        for dimension, changed in result.diff.items():
            m.DECISION_DIFF.labels(decision.rollout, dimension, str(changed).lower()).inc()
        try:
            publisher = self._publisher_or_raise()
            await publisher.add_wait(msgspec.structs.replace(decision, shadow=result), subject, self.buffer_timeout_s)
        except Exception:
            log.exception("rollout SDK: could not record shadow decision %s", decision.id)

    # --- outcomes and metrics ---------------------------------------------------------
    async def record_outcome(
        self,
        rollout: str,
        decision_id: str,
        variant: str,
        verdict: str,
        *,
        quality: float | None = None,
        reward: float | None = None,
        confidence: float | None = None,
    ) -> Outcome:
        """Validate and buffer an Outcome; raise EventError at once for a bad field.

        Waits up to ``buffer_timeout_s`` for buffer space, then raises BufferFull.
        """
        now = time.time_ns() // 1_000_000
        outcome = _validated(
            Outcome(
                id=new_event_id(now), rollout=rollout, time_ms=now, producer=self.producer,
                decision_id=decision_id, variant=variant, verdict=verdict,  # type: ignore[arg-type]
                quality=quality, reward=reward, confidence=confidence,
            )
        )
        await self._publisher_or_raise().add_wait(outcome, self._subject(rollout, "outcome"), self.buffer_timeout_s)
        return outcome

    async def record_metric(
        self,
        rollout: str,
        variant: str,
        name: str,
        value: float,
        *,
        unit: str = "1",
        decision_id: str | None = None,
    ) -> Metric:
        """Validate and buffer a Metric (``latency_ms``, ``cost_cents``, ``error``...)."""
        now = time.time_ns() // 1_000_000
        metric = _validated(
            Metric(
                id=new_event_id(now), rollout=rollout, time_ms=now, producer=self.producer,
                variant=variant, name=name, value=value, unit=unit, decision_id=decision_id,
            )
        )
        await self._publisher_or_raise().add_wait(metric, self._subject(rollout, "metric"), self.buffer_timeout_s)
        return metric

    async def wait_room(self, events: int = 1, timeout: float | None = None) -> None:
        """Back-pressure for synchronous callers: wait until ``events`` more events fit in
        the buffer (up to ``timeout``, default ``buffer_timeout_s``), else raise BufferFull.

        A service that makes bursts of ``assign()`` calls without awaiting anything in
        between awaits this before each burst, so ``assign()`` never meets a full buffer.
        """
        publisher = self._publisher_or_raise()
        wait = self.buffer_timeout_s if timeout is None else timeout
        if not await publisher.wait_room(events, wait):
            raise BufferFull(
                f"no room for {events} events within {wait}s ({publisher.buffered} buffered, "
                f"max_buffered={publisher.max_buffered}): JetStream and the outbox are not keeping up"
            )

    async def flush(self, timeout: float = 10.0) -> None:
        """Send everything buffered now (to JetStream, or the outbox if it is away)."""
        await self._publisher_or_raise().flush(timeout)

    @property
    def outbox_depth(self) -> int:
        """Events waiting in the outbox for NATS."""
        return self._publisher.outbox.depth if self._publisher is not None else 0

    async def wait_outbox_empty(self, timeout: float) -> bool:
        """Wait until the outbox drained (True) or ``timeout`` passed (False)."""
        publisher = self._publisher_or_raise()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await publisher.drain_outbox(max(0.0, deadline - time.monotonic())):
                return True
            await asyncio.sleep(0.05)
        return False


def _decode_control(subject: str, data: bytes, seq: int) -> list[Any]:
    events, rejected = decode_from_log(subject, data)
    for bad in rejected:
        log.warning("rollout SDK: ignoring bad control message at seq %d: %s", seq, bad.reason)
    return events


def _fold_into(states: dict[str, ControlState], seqs: dict[str, int], subject: str, data: bytes, seq: int) -> None:
    """Fold one message into ``states`` silently (catch-up): the newest command wins."""
    for event in _decode_control(subject, data, seq):
        if seq > seqs.get(event.rollout, 0) and apply_command(states, event) is not None:
            seqs[event.rollout] = seq


def _fresh_name_on_reset(sub: Any, fresh_name: Callable[[], str]) -> None:
    """Make nats-py re-create a reset ordered consumer under a new name.

    After a gap or missed heartbeats nats-py 2.16 re-creates an ordered consumer from
    its saved request, under the *same* name. The old consumer usually still exists, so
    the server takes the request as an update and refuses it ("deliver policy can not be
    updated"), and the follower would stop until the next reconnect. Renaming the saved
    request first makes the re-create a plain create (resuming after the last stream
    sequence seen), through the same filtered subject. The old consumer has no
    subscriber left and expires after ``FOLLOWER_INACTIVE_S``.
    """
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    recreate = getattr(jsi, "recreate_consumer", None)
    if jsi is None or recreate is None or not hasattr(jsi, "_ccreq"):
        log.warning("rollout SDK: this nats-py has no ordered-consumer reset hook; after a gap the "
                    "control follower resumes only at the next reconnect")
        return

    async def recreate_under_a_fresh_name() -> None:
        jsi._ccreq.name = fresh_name()
        await recreate()

    jsi.recreate_consumer = recreate_under_a_fresh_name


E = TypeVar("E", bound=Event)


_HINTS = {
    "$.verdict": "verdict is one of win, loss, neutral, inconclusive",
    "$.value": "a finite number with |value| <= 1e12 (NaN and infinity are rejected)",
    "$.quality": "a finite number with |quality| <= 1e12 (NaN and infinity are rejected)",
    "$.reward": "a finite number with |reward| <= 1e12 (NaN and infinity are rejected)",
    "$.confidence": "a probability in [0, 1]",
}
_TOKEN_HINT = "ids are 1-64 characters of A-Z a-z 0-9 _ - (they become NATS subject tokens)"


def _validated(event: E) -> E:
    """Run a freshly built event through the contract's validation (constructors do not)."""
    try:
        return validate(event)  # type: ignore[return-value]
    except EventError as error:
        hint = _HINTS.get(error.field, _TOKEN_HINT if "regex" in error.rule else "")
        raise EventError(error.field, error.rule, hint) from None
