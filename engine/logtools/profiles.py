"""Traffic profiles for the judgement simulator: what one variant's requests look like.

A :class:`TrafficProfile` draws, per request, a quality score, a latency and a cost.
Two are built in, from the traffic the rollback engine was measured on:

* ``typical``: 20 requests/s, quality normal(90, 9), cost normal(2.0, 0.5) cents, latency
  a lognormal body (median 600 ms, sigma 0.203) with a 2% slow tail (lognormal, median
  2 s, sigma 0.3): p95 = 877 ms, p99 = 2.0 s.
* ``near``: the same with latency scaled to p95 = 1490 ms and cost normal(2.8, 0.5):
  a baseline close to the canary split system's absolute thresholds (1600 ms, 3.0 cents).

:func:`fit_profile` builds one from an export file (``rollout export``): the recorded
values of one variant, drawn with replacement (a bootstrap, so skew, ties and tails are
the recording's own), at the recording's request rate.

A :class:`Regression` changes the candidate's draws: ``quality-3`` (3 points lower),
``p95+10%`` (every latency 10% higher, so every percentile is), ``cost+20%``, or any
``metric:+N`` / ``metric:-N`` / ``metric:xF`` list.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from rollout_engine.consumers.folding import events_of
from rollout_engine.engine.logtools.export import read_export
from rollout_engine.events import Decision, Metric, Outcome

__all__ = ["PROFILES", "REGRESSIONS", "Regression", "TrafficProfile", "fit_profile", "parse_regression"]

METRICS = ("quality", "latency_ms", "cost_cents")


@dataclass(frozen=True, slots=True)
class Normal:
    mean: float
    sd: float
    floor: float | None = None

    def draw(self, rng: random.Random) -> float:
        value = rng.gauss(self.mean, self.sd)
        return value if self.floor is None else max(self.floor, value)


@dataclass(frozen=True, slots=True)
class LongTail:
    """A lognormal body with a fraction of requests from a slower lognormal tail."""

    median: float
    sigma: float
    tail: float
    tail_median: float
    tail_sigma: float
    scale: float = 1.0

    def draw(self, rng: random.Random) -> float:
        if rng.random() < self.tail:
            return self.scale * self.tail_median * math.exp(rng.gauss(0.0, self.tail_sigma))
        return self.scale * self.median * math.exp(rng.gauss(0.0, self.sigma))


@dataclass(frozen=True, slots=True)
class Empirical:
    """Recorded values, drawn with replacement."""

    values: tuple[float, ...]

    def draw(self, rng: random.Random) -> float:
        return self.values[int(rng.random() * len(self.values))]


Sampler = Normal | LongTail | Empirical


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """Requests per second and the distribution of each metric of one variant."""

    name: str
    rate_per_s: float
    samplers: dict[str, Sampler]
    about: str = ""

    def only(self, metrics: tuple[str, ...]) -> TrafficProfile:
        """This profile with only ``metrics`` (a fold judging one metric pays for no other)."""
        return TrafficProfile(self.name, self.rate_per_s, {m: s for m, s in self.samplers.items() if m in metrics},
                              self.about)

    def draw(self, rng: random.Random) -> tuple[float | None, float | None, float | None]:
        """(quality, latency_ms, cost_cents) of one request; None where the profile has none."""
        s = self.samplers
        return tuple(s[m].draw(rng) if m in s else None for m in METRICS)  # type: ignore[return-value]


TYPICAL_LATENCY = LongTail(median=600.0, sigma=0.2028, tail=0.02, tail_median=2000.0, tail_sigma=0.3)

PROFILES: dict[str, TrafficProfile] = {
    "typical": TrafficProfile("typical", 20.0, {
        "quality": Normal(90.0, 9.0), "latency_ms": TYPICAL_LATENCY, "cost_cents": Normal(2.0, 0.5, floor=0.0)},
        "20 req/s; quality 90 (sd 9); latency p95 877 ms, 2% slow tail, p99 2.0 s; cost 2.0 (sd 0.5) cents"),
    "near": TrafficProfile("near", 20.0, {
        "quality": Normal(90.0, 9.0),
        "latency_ms": LongTail(600.0, 0.2028, 0.02, 2000.0, 0.3, scale=1490.0 / 877.0),
        "cost_cents": Normal(2.8, 0.5, floor=0.0)},
        "typical, with latency p95 1490 ms and cost 2.8 cents: close to the canary split thresholds"),
}


@dataclass(frozen=True, slots=True)
class Regression:
    """How the candidate differs from the baseline: per metric, a shift and a scale."""

    name: str = "none"
    shift: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.shift and not self.scale

    def apply(self, values: tuple[float | None, ...]) -> tuple[float | None, ...]:
        out = []
        for metric, value in zip(METRICS, values, strict=True):
            if value is not None:
                value = value * self.scale.get(metric, 1.0) + self.shift.get(metric, 0.0)
            out.append(value)
        return tuple(out)


REGRESSIONS: dict[str, Regression] = {
    "none": Regression("none"),
    "quality-3": Regression("quality-3", shift={"quality": -3.0}),
    "p95+10%": Regression("p95+10%", scale={"latency_ms": 1.10}),
    "cost+20%": Regression("cost+20%", scale={"cost_cents": 1.20}),
}


def parse_regression(text: str) -> Regression:
    """A named regression (``none``, ``quality-3``, ``p95+10%``, ``cost+20%``), or
    ``metric:+N``, ``metric:-N``, ``metric:xF`` joined by commas (``latency_ms:x1.2,quality:-1``)."""
    if text in REGRESSIONS:
        return REGRESSIONS[text]
    shift: dict[str, float] = {}
    scale: dict[str, float] = {}
    for part in text.split(","):
        metric, _, change = part.strip().partition(":")
        if metric not in METRICS or not change:
            raise ValueError(f"regression {part!r}: expected one of {sorted(REGRESSIONS)} or METRIC:+N, "
                             f"METRIC:-N, METRIC:xF with METRIC in {METRICS}")
        try:
            if change[0] in "x*":
                scale[metric] = float(change[1:])
            else:
                shift[metric] = float(change)
        except ValueError:
            raise ValueError(f"regression {part!r}: {change!r} is not +N, -N or xF") from None
    return Regression(text, shift, scale)


def fit_profile(path: str | Path, *, rollout: str | None = None, variant: str = "baseline") -> TrafficProfile:
    """A profile drawn from one variant's recorded values in an export file.

    Quality comes from outcomes, latency and cost from ``latency_ms`` / ``cost_cents``
    metrics; the rate is every decision (of the rollout, all variants) over their
    event-time span, the request rate a split divides. Raises ValueError when the file
    holds no values of that variant.
    """
    _, records, _ = read_export(path)
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    times: list[int] = []
    for record in records:
        for event in events_of(record):
            if rollout is not None and getattr(event, "rollout", None) != rollout:
                continue
            if isinstance(event, Decision):
                times.append(event.time_ms)
            elif getattr(event, "variant", None) != variant:
                continue
            elif isinstance(event, Outcome) and event.quality is not None:
                values["quality"].append(event.quality)
            elif isinstance(event, Metric) and event.name in values:
                values[event.name].append(event.value)
    if not any(values.values()):
        where = f" of rollout {rollout!r}" if rollout else ""
        raise ValueError(f"{path}: no quality, latency_ms or cost_cents values of variant {variant!r}{where}; "
                         "pass --rollout and --variant naming what the export holds")
    span_s = (max(times) - min(times)) / 1000.0 if len(times) > 1 else 0.0
    rate = len(times) / span_s if span_s > 0 else 20.0
    samplers: dict[str, Sampler] = {m: Empirical(tuple(v)) for m, v in values.items() if v}
    counts = ", ".join(f"{m} {len(v):,}" for m, v in values.items() if v)
    return TrafficProfile(f"fitted:{Path(path).name}", rate, samplers,
                          f"{variant} values of {path} drawn with replacement ({counts}); {rate:.1f} req/s")
