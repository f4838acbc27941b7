"""Canary-stats state: the per-rollout and per-variant structures, and their encoding.

:mod:`consumers.canary_stats` folds events into these and reads windows from them;
this module owns how they look in memory (slots and typed arrays: about 10 KB a busy
rollout) and how one rollout is encoded as a snapshot *part* (canonical: sorted keys,
arrays little-endian), so a restored fold continues byte for byte.
"""

from __future__ import annotations

from array import array

import msgspec

from rollout_engine.consumers.windows import Series, SeriesState, pack, unpack

__all__ = [
    "NO_SHADOW",
    "MetaState",
    "RolloutStats",
    "VariantStats",
    "decode_rollout",
    "encode_rollout",
    "encoder",
    "meta_decoder",
]

NO_SHADOW = -1
"""Diff code of a decision without a shadow result."""


class VariantStats:
    """One variant's state: all-time counters, outcome buffer, metric series."""

    __slots__ = ("decisions", "diff_changed", "diff_seen", "index", "metrics", "name", "ocodes", "otimes",
                 "outcomes", "quality", "shadowed", "verdicts")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index  # position in the rollout's ``vnames``
        self.decisions = 0
        self.shadowed = 0
        self.diff_seen: dict[str, int] = {}
        self.diff_changed: dict[str, int] = {}
        self.outcomes = 0
        self.verdicts = [0, 0, 0, 0]
        self.quality: Series | None = None
        self.metrics: dict[str, Series] = {}
        # Outcomes newer than the time cut-off or among the last N: event times, verdict codes.
        self.otimes = array("q")
        self.ocodes = array("b")


class RolloutStats:
    """One rollout's state: its variants and its decision buffer."""

    __slots__ = ("dcodes", "dims", "dtimes", "dvar", "max_ms", "variants", "vnames")

    def __init__(self) -> None:
        self.variants: dict[str, VariantStats] = {}
        self.vnames: list[str] = []  # variant names by index, in order of first appearance
        self.max_ms = 0
        self.dims: list[str] = []
        # Decisions newer than the time cut-off or among the last N, as parallel typed
        # arrays: event time, variant index, diff code (present-dims mask << 32 |
        # changed-dims mask, -1 without a shadow). ``dcodes`` stays None until the
        # rollout's first shadow result (most rollouts never have one).
        self.dtimes = array("q")
        self.dvar = array("h")
        self.dcodes: array | None = None


# --- canonical snapshot encoding -----------------------------------------------------------
class _VariantState(msgspec.Struct, array_like=True, gc=False):
    decisions: int
    shadowed: int
    diff_seen: dict[str, int]
    diff_changed: dict[str, int]
    outcomes: int
    verdicts: list[int]
    quality: SeriesState | None
    metrics: dict[str, SeriesState]
    otimes: bytes
    ocodes: bytes


class _RolloutState(msgspec.Struct, array_like=True, gc=False):
    max_ms: int
    dims: list[str]
    vnames: list[str]
    variants: dict[str, _VariantState]
    dtimes: bytes
    dvar: bytes
    dcodes: bytes | None


class MetaState(msgspec.Struct, array_like=True, gc=False):
    """The engine-wide part: window settings (checked on restore) and engine time."""

    last_n: int
    window_ms: int
    time_cap: int
    tick_ms: int
    max_ms: int


encoder = msgspec.msgpack.Encoder(order="deterministic")
_rollout_decoder = msgspec.msgpack.Decoder(_RolloutState)
meta_decoder = msgspec.msgpack.Decoder(MetaState)


def encode_rollout(rs: RolloutStats) -> bytes:
    """One rollout's part, canonically encoded (sorted keys, arrays little-endian)."""
    variants = {}
    for name, vs in sorted(rs.variants.items()):
        variants[name] = _VariantState(
            vs.decisions, vs.shadowed, dict(sorted(vs.diff_seen.items())),
            dict(sorted(vs.diff_changed.items())), vs.outcomes, list(vs.verdicts),
            None if vs.quality is None else vs.quality.state(),
            {m: s.state() for m, s in sorted(vs.metrics.items())},
            pack(vs.otimes), pack(vs.ocodes),
        )
    return encoder.encode(_RolloutState(
        rs.max_ms, rs.dims, rs.vnames, variants, pack(rs.dtimes), pack(rs.dvar),
        None if rs.dcodes is None else pack(rs.dcodes),
    ))


def decode_rollout(blob: bytes) -> RolloutStats:
    """Inverse of :func:`encode_rollout`."""
    state = _rollout_decoder.decode(blob)
    rs = RolloutStats()
    rs.max_ms = state.max_ms
    rs.dims = list(state.dims)
    rs.vnames = list(state.vnames)
    for name, v in state.variants.items():
        vs = rs.variants[name] = VariantStats(name, rs.vnames.index(name))
        rs.vnames[vs.index] = vs.name  # share one str per variant
        vs.decisions, vs.shadowed, vs.outcomes = v.decisions, v.shadowed, v.outcomes
        vs.diff_seen, vs.diff_changed = dict(v.diff_seen), dict(v.diff_changed)
        vs.verdicts = list(v.verdicts)
        vs.quality = None if v.quality is None else Series.from_state(v.quality)
        vs.metrics = {m: Series.from_state(s) for m, s in v.metrics.items()}
        vs.otimes, vs.ocodes = unpack("q", v.otimes), unpack("b", v.ocodes)
    rs.dtimes = unpack("q", state.dtimes)
    rs.dvar = unpack("h", state.dvar)
    rs.dcodes = None if state.dcodes is None else unpack("q", state.dcodes)
    return rs
