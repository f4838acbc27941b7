"""The runtime's JetStream edge: the durable consumer it reads (the relay is ``consumers/relay.py``).

- :func:`subscribe` (re)creates a consumer's durable JetStream consumer at a start
  sequence, filtered to one partition when asked, and binds a pull subscription to it;
  a cluster electing a leader is waited out;
- :func:`log_message` turns a fetched JetStream message into the one log-message record;
  :func:`get_message` reads one by sequence (a gap's filling), :func:`first_seq` says
  where the stream starts now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

from rollout_engine.consumers.consumer import PartitionMismatch, RuntimeSettings
from rollout_engine.events import LogMessage, subjects

__all__ = ["first_seq", "get_message", "log_message", "subscribe"]

log = logging.getLogger(__name__)


def log_message(msg: Any) -> LogMessage:
    """A fetched JetStream message as the one log-message record (store time in ms)."""
    meta = msg.metadata
    stamp = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else 0
    return LogMessage(meta.sequence.stream, msg.subject, msg.data, stamp)


async def get_message(js: JetStreamContext, seq: int) -> LogMessage | None:
    """The log's message at ``seq`` (a direct get), or None when it is gone."""
    try:
        msg = await js.get_msg(subjects.LOG_STREAM, seq)
    except NotFoundError:
        return None
    stamp = int(msg.time.timestamp() * 1000) if msg.time else 0  # the store time, as a fetch reports it
    return LogMessage(seq, msg.subject or "", msg.data or b"", stamp)


async def first_seq(js: JetStreamContext) -> int:
    """The first sequence the log still holds."""
    info = await js.stream_info(subjects.LOG_STREAM)
    return int(info.state.first_seq)


async def _partition_filters(js: JetStreamContext, name: str, partition: int | None) -> list[str] | None:
    """Filter subjects of a partition (None: the whole log)."""
    if partition is None:
        return None
    info = await js.stream_info(subjects.LOG_STREAM)
    transform = info.config.subject_transform
    count = subjects.partition_count(transform.dest if transform else None)
    if partition >= count:
        raise PartitionMismatch(
            f"consumer {name!r} asks for partition {partition} but stream {subjects.LOG_STREAM} has "
            f"{count or 'no'} partitions; create the log with `partitions` set (docs/scaling.md) or pick "
            f"partitions 0..{max(count - 1, 0)}"
        )
    return subjects.partition_filters(partition)


async def _subscribe_once(js: JetStreamContext, name: str, start: int, partition: int | None,
                          settings: RuntimeSettings, batch: int) -> Any:
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(subjects.LOG_STREAM, name)
    config = ConsumerConfig(
        durable_name=name,
        description=f"rollout-engine consumer {name} (position kept in its SQLite store)",
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
        opt_start_seq=start if start > 1 else None,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.consumer_max_deliver,
        max_ack_pending=max(4 * batch, 1000),
        filter_subjects=await _partition_filters(js, name, partition),
    )
    await js.add_consumer(subjects.LOG_STREAM, config)
    return await js.pull_subscribe_bind(durable=name, stream=subjects.LOG_STREAM)


async def subscribe(js: JetStreamContext, name: str, start: int, *, partition: int | None, settings: RuntimeSettings,
                    batch: int, stopping: Callable[[], bool], wait_s: float = 60.0) -> Any:
    """(Re)create the durable consumer ``name`` at stream sequence ``start`` and bind to it.

    The SQLite position is the truth and the JetStream consumer only a cursor, so it is
    deleted and created again rather than resumed: nothing pending from a previous
    process can arrive out of order. A JetStream cluster electing a leader (a node
    lost, or just started) times out API requests for a few seconds: those are retried
    for ``wait_s``; anything else (no stream, a bad partition) is raised at once.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await _subscribe_once(js, name, start, partition, settings, batch)
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            if stopping() or time.monotonic() > deadline:
                raise
            log.warning("%s: could not create the consumer (%s); retrying", name, type(exc).__name__)
            await asyncio.sleep(0.5)
