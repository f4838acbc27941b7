"""The hysteresis cases on the pure guard machine: sustain, recovery, hold-down, flap."""

from __future__ import annotations

from rollout_engine.consumers.rollback.escalation import EscalationBook
from rollout_engine.consumers.rollback.hysteresis import GuardMachine, step
from rollout_engine.consumers.rollback.policy import EscalationConfig, Hysteresis

CFG = Hysteresis(sustain_ms=2_000, recovery_sustain_ms=3_000, hold_down_ms=30_000, check_interval_ms=0,
                 flap_window_ms=300_000, max_toggles=4, penalty_ms=60_000)


def feed(m: GuardMachine, cfg: Hysteresis, points: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(t, s) for t, status in points if (s := step(m, status, t, cfg)) is not None]  # type: ignore[arg-type]


def test_breach_shorter_than_sustain_does_not_alarm() -> None:
    m = GuardMachine()
    assert feed(m, CFG, [(0, "fail"), (1_000, "fail"), (1_999, "fail"), (2_100, "pass")]) == []
    assert m.state == "ok"


def test_breach_sustained_for_sustain_duration_alarms_once() -> None:
    m = GuardMachine()
    assert feed(m, CFG, [(0, "fail"), (1_000, "fail"), (2_000, "fail"), (2_500, "fail")]) == [(2_000, "alarm")]
    assert m.alarmed


def test_isolated_blips_never_accumulate_into_an_alarm() -> None:
    m = GuardMachine()
    points = [(t, "fail" if t % 2_000 == 0 else "pass") for t in range(0, 60_000, 1_000)]
    assert feed(m, CFG, points) == []


def test_inconclusive_neither_resets_nor_advances_sustain() -> None:
    m = GuardMachine()
    assert feed(m, CFG, [(0, "fail"), (1_000, "inconclusive"), (2_000, "fail")]) == [(2_000, "alarm")]


def test_zero_sustain_fires_on_first_failure() -> None:
    cfg = Hysteresis(sustain_ms=0)
    assert feed(GuardMachine(), cfg, [(5, "fail")]) == [(5, "alarm")]


def test_min_failures_counts_consecutive_checks_spaced_by_interval() -> None:
    cfg = Hysteresis(min_failures=3, check_interval_ms=1_000)
    m = GuardMachine()
    # many failing events within one interval count as one check
    assert feed(m, cfg, [(t, "fail") for t in range(0, 1_000, 100)]) == []
    assert feed(m, cfg, [(1_000, "fail"), (1_500, "fail"), (2_000, "fail")]) == [(2_000, "alarm")]


def test_recovery_needs_hold_down_then_its_own_sustain() -> None:
    m = GuardMachine()
    feed(m, CFG, [(0, "fail"), (2_000, "fail")])
    # passing inside hold-down does not recover
    assert feed(m, CFG, [(10_000, "pass"), (20_000, "pass")]) == []
    assert m.state == "alarm"
    # after hold-down: recovery must be sustained 3 s; a hold (between thresholds) interrupts it
    assert feed(m, CFG, [(32_000, "pass"), (33_000, "hold"), (34_000, "pass"), (36_000, "pass")]) == []
    assert feed(m, CFG, [(37_000, "pass")]) == [(37_000, "recovered")]
    assert m.state == "ok"


def test_flapping_starts_a_penalty() -> None:
    cfg = Hysteresis(sustain_ms=0, recovery_sustain_ms=0, hold_down_ms=0, max_toggles=4, penalty_ms=60_000)
    m = GuardMachine()
    signals = feed(m, cfg, [(t * 1_000, "fail" if t % 2 == 0 else "pass") for t in range(5)])
    assert [s for _, s in signals] == ["alarm", "recovered", "alarm", "recovered", "alarm"]
    assert m.penalized(4_000) and m.penalized(63_999) and not m.penalized(64_000)


def test_toggles_outside_the_flap_window_do_not_count() -> None:
    cfg = Hysteresis(sustain_ms=0, recovery_sustain_ms=0, hold_down_ms=0, max_toggles=2, flap_window_ms=10_000)
    m = GuardMachine()
    feed(m, cfg, [(t * 20_000, "fail" if t % 2 == 0 else "pass") for t in range(6)])
    assert not m.penalized(100_000)


def test_inconclusive_limit_signals_once() -> None:
    cfg = Hysteresis(inconclusive_limit=3, check_interval_ms=1_000)
    m = GuardMachine()
    points = [(t, "inconclusive") for t in range(0, 6_000, 500)]
    assert feed(m, cfg, points) == [(2_000, "inconclusive_limit")]
    assert feed(m, cfg, [(7_000, "pass"), (8_000, "inconclusive")]) == []


def test_escalation_arms_after_three_breaches_in_window_and_expires() -> None:
    cfg = EscalationConfig()
    book = EscalationBook()
    hour = 3_600_000
    assert book.record("latency", 0, cfg) is None
    assert book.record("latency", 10 * hour, cfg) is None
    assert book.record("cost", 11 * hour, cfg) is None
    flag = book.record("latency", 20 * hour, cfg)
    assert flag is not None and flag.count == 3 and flag.expires_ms == 24 * hour
    assert book.record("latency", 21 * hour, cfg) is None  # already armed
    assert book.expire(23 * hour) == []
    assert [f.trigger for f in book.expire(24 * hour)] == ["latency"]


def test_escalation_forgets_breaches_older_than_the_window() -> None:
    cfg = EscalationConfig()
    book = EscalationBook()
    day = 24 * 3_600_000
    for t in (0, day // 2, day + 1):
        flag = book.record("quality", t, cfg)
    assert flag is None
