"""Reading ranges of the log: by sequence, by store time, by subject filters.

:func:`read_messages` streams :class:`events.LogMessage` records in stream order
through an ephemeral pull consumer; export, replay ``--stream``, ``rollout events``,
the weekly report, the metrics exporter and the API's on-demand evaluation all read
through it. What a message holds is read with ``consumers.folding.read_message``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from rollout_engine.events import LogMessage, subjects

__all__ = ["read_messages"]


def _to_datetime(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC)


async def read_messages(
    js: JetStreamContext,
    filters: Sequence[str] | None = None,
    *,
    start_seq: int = 0,
    since_ms: int | None = None,
    until_ms: int | None = None,
    follow: bool = False,
    batch: int = 1000,
) -> AsyncIterator[LogMessage]:
    """Yield log messages in stream order from an ephemeral pull consumer.

    Without ``follow`` it stops at the end of the log as it was when called; with it,
    it waits for new messages until cancelled. ``since_ms``/``until_ms`` compare the
    messages' store time (when JetStream accepted them).
    """
    if start_seq > 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq)
    elif since_ms is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                opt_start_time=_to_datetime(since_ms))
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    config.ack_policy = AckPolicy.NONE
    config.inactive_threshold = 60.0
    config.max_ack_pending = -1
    flt = list(filters or [])
    if len(flt) == 1:
        config.filter_subject = flt[0]
    elif flt:
        config.filter_subjects = flt
    info = await js.add_consumer(subjects.LOG_STREAM, config)
    sub = await js.pull_subscribe_bind(consumer=info.name, stream=subjects.LOG_STREAM)
    try:
        remaining = int(info.num_pending or 0)
        while follow or remaining > 0:
            try:
                msgs = await sub.fetch(batch, timeout=1.0 if follow else 5.0)
            except TimeoutError:
                if follow:
                    continue
                break
            for msg in msgs:
                meta = msg.metadata
                remaining = int(meta.num_pending)
                stamp = int(meta.timestamp.timestamp() * 1000) if meta.timestamp else 0
                if until_ms is not None and stamp > until_ms:
                    return
                if since_ms is not None and stamp < since_ms:
                    continue  # the server's start time is a hint; the filter is exact
                yield LogMessage(int(meta.sequence.stream), msg.subject, bytes(msg.data), stamp,
                                 dict(msg.headers) if msg.headers else None)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(subjects.LOG_STREAM, info.name)
