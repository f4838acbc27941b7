"""The rollout index behind ``status`` pages (engine/api/rollout_index.py): order,
cursors, filters, and newest-command-wins, without a server."""

from __future__ import annotations

import pytest

from rollout_engine.engine.api.requests import ApiError, page_of
from rollout_engine.engine.api.rollout_index import RolloutIndex
from rollout_engine.events import ControlState, transitions

KILLED = transitions.kill(ControlState())
CANARY = ControlState(canary_pct=10.0)


def _index() -> RolloutIndex:
    index = RolloutIndex(building=True)
    for i in range(50):  # arrive out of order, as the log delivers them
        index.add(f"r{(i * 7) % 50:02d}")
    index.add("_engine")
    index.built()
    for i in range(0, 50, 5):
        index.apply(100 + i, KILLED, f"r{i:02d}")
    return index


def test_pages_cover_every_rollout_once_in_name_order_and_skip_engine_names() -> None:
    index, seen, cursor = _index(), [], None
    while True:
        page = index.page(7, cursor)
        seen += [name for name, _ in page.items]
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.items[-1][0]
        cursor = page.next_cursor
    assert seen == [f"r{i:02d}" for i in range(50)]
    assert index.page(10, "r49").items == [] and index.page(10, "r49").next_cursor is None
    assert index.page(50).next_cursor is None, "an exactly full last page says there is no next one"


def test_filters_by_phase_and_prefix_and_counts_phases() -> None:
    index = _index()
    killed = index.page(3, phase="aborted")
    assert [n for n, _ in killed.items] == ["r00", "r05", "r10"] and killed.next_cursor == "r10"
    assert [n for n, _ in index.page(100, "r10", phase="aborted").items] == ["r15", "r20", "r25", "r30", "r35",
                                                                             "r40", "r45"]
    assert [n for n, _ in index.page(100, prefix="r1").items] == [f"r1{i}" for i in range(10)]
    assert [n for n, _ in index.page(100, prefix="r1", phase="aborted").items] == ["r10", "r15"]
    assert index.phases["aborted"] == 10 and index.phases["idle"] == 40


def test_the_newest_command_wins_whatever_the_delivery_order() -> None:
    index = _index()
    index.apply(90, CANARY, "r00")  # older than the kill at seq 100: ignored
    assert index.state_of("r00") == KILLED
    index.apply(200, CANARY, "r00")
    assert index.state_of("r00") == CANARY and index.phases["aborted"] == 9 and index.phases["progressing"] == 1
    index.apply(300, KILLED, "new-one")  # a command for a rollout not seen yet: listed, in order
    assert index.names[-1] == "r49" and "new-one" in index.names and index.names == sorted(index.names)


@pytest.mark.parametrize(("body", "words"), [
    ({"limit": 0}, "limit (--limit)"), ({"limit": True}, "limit (--limit)"), ({"cursor": ""}, "cursor (--cursor)"),
    ({"state": "asleep"}, "state (--state)"), ({"prefix": "a.b"}, "prefix (--prefix)"), ({"offset": 3}, "unknown"),
])
def test_page_requests_are_refused_naming_the_flag(body: dict[str, object], words: str) -> None:
    with pytest.raises(ApiError) as refused:
        page_of(body, 100, 1000)
    assert refused.value.code == 400 and words in refused.value.message


def test_page_request_defaults_and_aliases() -> None:
    assert page_of({}, 100, 1000) == (100, None, None, "")
    assert page_of({"state": "killed", "limit": 5, "cursor": "r1", "prefix": "r"}, 100, 1000) == (5, "r1", "aborted", "r")
    assert page_of({"state": "running"}, 100, 1000)[2] == "progressing"
