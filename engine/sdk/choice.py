"""``choose(rollout, unit)``: pick a bandit arm locally from the published bandit view.

The ``bandit`` consumer publishes a :class:`consumers.bandit.BanditView` per rollout to
KV key ``bandit.<rollout>`` (arm weights per context and the guardrails). A
:class:`BanditChooser` watches those keys and answers ``choose()`` with no round trip:

- the arm is drawn from the weights with a uniform number derived from the decision id
  (``blake2b(rollout, decision_id)``), so the same decision always gets the same arm and
  no global random state is touched;
- the propensity logged is the weight of the arm drawn: exactly the probability the
  policy served it, which off-policy evaluation (``rollout ope``) needs;
- the execution mode follows :func:`consumers.guardrails.decide_mode`; a normal run
  refused by a guardrail is logged with reason ``forced_safe`` and ``dry_run=True``.

Example::

    chooser = BanditChooser()
    await chooser.watch(js, "checkout-v2")       # or chooser.update(kv_bytes) in tests
    choice = chooser.choose("checkout-v2", "user-42")
    decision = chooser.decision(choice, producer="svc-1")   # publish it, then serve
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError

from rollout_engine.consumers.bandit.state import BanditView
from rollout_engine.consumers.guardrails import decide_mode, prune_normal_times
from rollout_engine.events import Decision, new_event_id, subjects

__all__ = ["BanditChooser", "Choice", "NoBanditState", "uniform_from"]

log = logging.getLogger(__name__)
_decoder = msgspec.msgpack.Decoder(BanditView)


class NoBanditState(LookupError):
    """No bandit view is known for this rollout yet (consumer not running, or no policy)."""


@dataclass(frozen=True, slots=True)
class Choice:
    """One answer of ``choose()``: which arm, with what probability, in which mode."""

    rollout: str
    unit: str
    decision_id: str
    time_ms: int
    variant: str
    propensity: float
    reason: Literal["bandit", "forced_safe", "disabled"]
    mode: Literal["safe", "normal"]
    execute: bool
    context: str | None
    why: str


def uniform_from(rollout: str, decision_id: str) -> float:
    """A number in [0, 1) that is a pure function of the decision: reproducible choices."""
    digest = hashlib.blake2b(f"{rollout}\x1f{decision_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class BanditChooser:
    """Local arm selection from the newest published bandit view of each rollout."""

    def __init__(self) -> None:
        self.views: dict[str, BanditView] = {}
        self._local_normal: dict[str, list[int]] = {}
        self._subs: list[Any] = []

    # --- state ------------------------------------------------------------------------
    def update(self, data: bytes) -> BanditView:
        """Take a published view (KV value); an older one (lower ``seq``) is ignored."""
        view = _decoder.decode(data)
        current = self.views.get(view.rollout)
        if current is None or view.seq >= current.seq:
            self.views[view.rollout] = view
        return self.views[view.rollout]

    async def watch(self, js: Any, rollout: str | None = None) -> None:
        """Follow KV ``bandit.<rollout>`` (or every ``bandit.*`` key) with a push
        subscription (no task of ours: it ends with the connection or :meth:`close`).

        With a rollout, its current view is read before returning, so the first
        ``choose()`` does not race the first KV delivery.
        """
        kv = await js.key_value(subjects.STATE_BUCKET)
        key = subjects.kv_filter("bandit", rollout)

        async def on_message(msg: Any) -> None:
            op = (msg.headers or {}).get("KV-Operation")
            if not msg.data or op in ("DEL", "PURGE"):
                return
            try:
                self.update(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring bad bandit view on %s: %s", msg.subject, exc)

        sub = await js.subscribe(
            subjects.kv_subject(key), cb=on_message, ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        self._subs.append(sub)
        if rollout:
            with contextlib.suppress(KeyNotFoundError):
                entry = await kv.get(key)
                if entry.value:
                    self.update(entry.value)

    async def close(self) -> None:
        """Stop every watch."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- choosing ---------------------------------------------------------------------
    def choose(
        self,
        rollout: str,
        unit: str,
        *,
        decision_id: str | None = None,
        time_ms: int | None = None,
        context: str | None = None,
        mode: Literal["safe", "normal"] | None = None,
        priority: float = 0.0,
        risk: str = "low",
    ) -> Choice:
        """Pick an arm for ``unit``; raise :class:`NoBanditState` if nothing is published."""
        view = self.views.get(rollout)
        if view is None or not view.arms:
            raise NoBanditState(
                f"no bandit view for rollout {rollout!r}: publish its arms with "
                "`rollout bandit config` and run the `bandit` consumer (see docs/bandit.md)"
            )
        now = time_ms if time_ms is not None else time.time_ns() // 1_000_000
        decision_id = decision_id or new_event_id(now)
        local = self._local_normal.setdefault(rollout, [])
        normal_times = sorted(set(view.normal_times) | set(local))
        granted = decide_mode(view.guardrail, now, normal_times, requested=mode, priority=priority, risk=risk)
        if not view.enabled:
            variant, propensity, reason = view.default_arm, 1.0, "disabled"
        else:
            weights = view.weights.get(context or "") or view.weights.get("") or [1.0 / len(view.arms)] * len(view.arms)
            u = uniform_from(rollout, decision_id)
            index, acc = len(weights) - 1, 0.0
            for i, w in enumerate(weights):
                acc += w
                if u < acc:
                    index = i
                    break
            variant, propensity = view.arms[index], weights[index]
            reason = "forced_safe" if granted.forced else "bandit"
        if granted.mode == "normal":
            self._local_normal[rollout] = [*prune_normal_times(local, now), now]
        return Choice(
            rollout=rollout, unit=unit, decision_id=decision_id, time_ms=now, variant=variant,
            propensity=propensity, reason=reason, mode=granted.mode, execute=granted.execute,
            context=context, why=granted.why,
        )

    @staticmethod
    def decision(choice: Choice, *, producer: str, canary_pct: float = 0.0, config_version: int = 0) -> Decision:
        """The Decision event to log for ``choice`` (reason, propensity, safe = dry run)."""
        return Decision(
            id=choice.decision_id, rollout=choice.rollout, time_ms=choice.time_ms, producer=producer,
            unit=choice.unit, variant=choice.variant, reason=choice.reason, canary_pct=canary_pct,
            config_version=config_version, propensity=choice.propensity,
            dry_run=choice.mode == "safe", context=choice.context,
        )
