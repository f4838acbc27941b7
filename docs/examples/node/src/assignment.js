// Sticky bucketing, the same function as the Python SDK (rollout_engine.engine.sdk.assignment).
//
// A (rollout, unit) pair hashes with murmur3 x86 32-bit, seed 0, over the UTF-8 bytes of
// `${rollout}:${unit}` into one of 10,000 buckets; the unit gets the candidate iff its
// bucket is below the canary percentage expressed in buckets. The `murmurhash` package
// hashes a string's UTF-8 bytes (TextEncoder), as Python's mmh3 does, so non-ASCII units
// land in the same bucket in both languages (tests/integration/test_node_client.py
// compares 100,000 units). Pure functions, no I/O.

import murmurhash from "murmurhash";

export const BUCKETS = 10_000;
export const SEED = 0;

/** The unit's bucket in [0, BUCKETS) for this rollout. */
export function bucket(rollout, unit) {
  return murmurhash.v3(`${rollout}:${unit}`, SEED) % BUCKETS;
}

/** Clamp a canary percentage to [0, 100]; NaN counts as 0 (the safe side). */
export function clampPct(pct) {
  if (Number.isNaN(pct)) return 0;
  return Math.min(100, Math.max(0, Number(pct)));
}

/** Python's round(): to the nearest integer, ties to even (Math.round sends ties up). */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Number of candidate buckets for `pct` percent (0.07% is 7 buckets). */
export function threshold(pct) {
  return roundHalfEven(clampPct(pct) * (BUCKETS / 100));
}

/**
 * Precompute the choice for a control state: {cut, candidate, baseline}, each choice being
 * {variant, reason, propensity}. Under the kill switch everyone gets the baseline,
 * reason "kill_switch", propensity 1.
 */
export function splitOf(state) {
  if (state.kill_switch) {
    const killed = { variant: state.baseline, reason: "kill_switch", propensity: 1.0 };
    return { cut: 0, candidate: killed, baseline: killed };
  }
  const cut = threshold(state.canary_pct);
  const share = cut / BUCKETS;
  return {
    cut,
    candidate: { variant: state.candidate, reason: "canary", propensity: share },
    baseline: { variant: state.baseline, reason: "default", propensity: 1.0 - share },
  };
}

/** The choice for a unit in bucket `unitBucket` under a split from splitOf(). */
export function pick(split, unitBucket) {
  return unitBucket < split.cut ? split.candidate : split.baseline;
}
