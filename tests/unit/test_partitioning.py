"""Partition arithmetic with no I/O: the partition function, assignments, subjects."""

from __future__ import annotations

import pytest

from rollout_engine.engine.stack.partitioning import assign, parse_partitions
from rollout_engine.events import subjects


def test_partition_of_is_fnv1a_modulo_n_like_the_server() -> None:
    # Values the nats-server mapping gave for {{partition(4,2)}} (tests/integration/test_partitions.py
    # checks 40 more against a live server).
    assert [subjects.partition_of(r, 4) for r in "abcdef"] == [0, 1, 2, 3, 0, 1]
    assert all(subjects.partition_of(f"svc-{i}", 1) == 0 for i in range(20))


def test_the_transform_appends_the_partition_and_its_count_reads_back() -> None:
    src, dest = subjects.partition_transform(16)
    assert src == "ro.*.*.*"
    assert dest.endswith(".{{partition(16,2)}}")
    assert subjects.partition_count(dest) == 16
    assert subjects.partition_count(None) == 0
    assert subjects.partition_filters(3) == ["ro.evt.*.*.3", "ro.ctl.*.*.3", subjects.TICK]
    with pytest.raises(ValueError):
        subjects.partition_transform(0)


def test_a_partitioned_subject_parses_like_the_published_one() -> None:
    assert subjects.parse("ro.evt.r1.metric.2") == subjects.parse("ro.evt.r1.metric")
    assert subjects.parse("ro.ctl.r1.kill_switch.0") == ("ctl", "r1", "kill_switch")
    with pytest.raises(ValueError):
        subjects.parse("ro.evt.r1.metric.x")
    assert subjects.log_filter("r1", "ctl") == "ro.ctl.r1.>"
    with pytest.raises(ValueError):
        subjects.log_filter("r1.*", "ctl")


def test_every_partition_has_exactly_one_owner_among_the_processes() -> None:
    for count in (1, 4, 7, 16):
        for processes in range(1, count + 1):
            owned = [assign(count, k, processes) for k in range(processes)]
            flat = sorted(p for part in owned for p in part)
            assert flat == list(range(count))
            assert max(map(len, owned)) - min(map(len, owned)) <= 1
    with pytest.raises(ValueError, match="would own nothing"):
        assign(2, 0, 3)
    with pytest.raises(ValueError):
        assign(4, 2, 2)


def test_partition_lists_and_ranges_parse_and_bad_ones_say_why() -> None:
    assert parse_partitions("0,1") == [0, 1]
    assert parse_partitions("3, 0-2,2") == [0, 1, 2, 3]
    for bad in ("", "a", "3-1", "-1", ","):
        with pytest.raises(ValueError, match="--partitions"):
            parse_partitions(bad)
