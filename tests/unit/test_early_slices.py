"""How early publish cuts a batch into slices: in order, nothing lost or doubled, at most
``SLICE`` messages and, past the first message, at most ``SLICE_BYTES`` of payload, so a
kill decided in a 100-event message leaves after that message's fold, not 15 more."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rollout_engine.consumers.early import SLICE, SLICE_BYTES, slices
from rollout_engine.events import LogMessage


def _log(sizes: list[int]) -> list[LogMessage]:
    return [LogMessage(seq, "ro.evt.r.metric", b"x" * size) for seq, size in enumerate(sizes, 1)]


@given(st.lists(st.integers(0, 3 * SLICE_BYTES), max_size=80))
def test_slices_cover_the_batch_in_order_within_both_bounds(sizes: list[int]) -> None:
    messages = _log(sizes)
    cut = list(slices(messages))
    assert [m for part in cut for m in part] == messages
    for part in cut:
        assert 1 <= len(part) <= SLICE
        assert sum(len(m.data) for m in part[:-1]) < SLICE_BYTES, "a slice ends at the message that fills it"


def test_small_messages_slice_by_count_and_sdk_batches_by_bytes() -> None:
    assert [len(p) for p in slices(_log([200] * 40))] == [16, 16, 8]
    assert [len(p) for p in slices(_log([20_000] * 3))] == [1, 1, 1]  # a 100-event SDK batch each
    assert [len(p) for p in slices(_log([6_000] * 5))] == [3, 2]
    assert list(slices([])) == []
