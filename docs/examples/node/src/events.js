// The wire contract, from Node: producer events as msgpack maps in the shapes of
// events/schema.py (docs/schemas/*.schema.json), and the subjects of events/subjects.py.
//
// An event is a map whose `kind` tag comes first, then the common fields (id, v, rollout,
// time_ms, producer), then the kind's own fields, every field present (null when unset),
// exactly as msgspec writes them. A message holds one event (a map) or a batch (an array
// of maps of one rollout and kind). Builders validate at once and throw an Error naming
// the field, so a bad event never reaches the log.

import { randomBytes } from "node:crypto";

export const SCHEMA_VERSION = 1;
export const ROOT = "ro";
export const LOG_STREAM = "RO_LOG";
export const CONTROL_ALL = `${ROOT}.ctl.>`;
export const VERDICTS = ["win", "loss", "neutral", "inconclusive"];
export const STATE_COMMANDS = ["kill_switch", "resume", "config"];
export const DEFAULT_STATE = Object.freeze({
  canary_pct: 0, kill_switch: false, config_version: 0, policy_version: 0,
  baseline: "baseline", candidate: "candidate",
});

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;
const UNIT = /^[^\x00-\x1f\x7f]{1,256}$/u;
const FLOAT_BOUND = 1e12;

/** Throw unless `value` is a subject-safe id (1-64 of A-Z a-z 0-9 _ -). */
export function checkToken(value, field) {
  if (typeof value !== "string" || !TOKEN.test(value)) {
    throw new Error(`${field}: expected 1-64 characters of A-Z a-z 0-9 _ -, got ${JSON.stringify(value)} `
      + "(ids become NATS subject tokens)");
  }
  return value;
}

function checkUnit(unit) {
  if (typeof unit !== "string" || !UNIT.test(unit) || [...unit].length > 256) {
    throw new Error(`unit: expected 1-256 printable characters, got ${JSON.stringify(unit)}`);
  }
  return unit;
}

function checkNumber(value, field, { min = -FLOAT_BOUND, max = FLOAT_BOUND, optional = false } = {}) {
  if (value === undefined || value === null) {
    if (optional) return null;
    throw new Error(`${field}: a number is required`);
  }
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    throw new Error(`${field}: expected a finite number in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** `ro.evt.<rollout>.<kind>` for a producer event. */
export function eventSubject(rollout, kind) {
  checkToken(rollout, "rollout");
  if (!["decision", "outcome", "metric"].includes(kind)) throw new Error(`unknown producer event kind ${kind}`);
  return `${ROOT}.evt.${rollout}.${kind}`;
}

// Event ids: 12 hex digits of ms + 8 of a per-process nonce + 8 of a counter, like
// events/ids.py: unique, time-sortable, subject-safe.
const NONCE = randomBytes(4).toString("hex");
let counter = randomBytes(3).readUIntBE(0, 3);

export function newEventId(timeMs = Date.now()) {
  counter = (counter + 1) >>> 0;
  return timeMs.toString(16).padStart(12, "0") + NONCE + counter.toString(16).padStart(8, "0");
}

function common(kind, rollout, producer, timeMs) {
  return {
    kind, id: newEventId(timeMs), v: SCHEMA_VERSION, rollout: checkToken(rollout, "rollout"),
    time_ms: timeMs, producer: checkToken(producer, "producer"),
  };
}

/** A Decision: which variant served which unit, and why (the choice from assignment.pick). */
export function decision({ rollout, producer, unit, choice, state, context = null, decisionId = null }) {
  const timeMs = Date.now();
  const event = common("decision", rollout, producer, timeMs);
  if (decisionId !== null) event.id = checkToken(decisionId, "decision_id");
  return Object.assign(event, {
    unit: checkUnit(unit),
    variant: checkToken(choice.variant, "variant"),
    reason: choice.reason,
    canary_pct: state.canary_pct,
    config_version: state.config_version,
    propensity: choice.propensity,
    shadow: null,
    dry_run: false,
    context: context === null ? null : checkToken(context, "context"),
  });
}

/** An Outcome: how decision `decisionId` turned out. */
export function outcome({ rollout, producer, decisionId, variant, verdict, quality, reward, confidence }) {
  if (!VERDICTS.includes(verdict)) throw new Error(`verdict: one of ${VERDICTS.join(", ")}, got ${JSON.stringify(verdict)}`);
  return Object.assign(common("outcome", rollout, producer, Date.now()), {
    decision_id: checkToken(decisionId, "decision_id"),
    variant: checkToken(variant, "variant"),
    verdict,
    quality: checkNumber(quality, "quality", { optional: true }),
    reward: checkNumber(reward, "reward", { optional: true }),
    confidence: checkNumber(confidence, "confidence", { min: 0, max: 1, optional: true }),
  });
}

/** A Metric: one measurement of a variant (latency_ms, cost_cents, error...). */
export function metric({ rollout, producer, variant, name, value, unit = "1", decisionId = null }) {
  return Object.assign(common("metric", rollout, producer, Date.now()), {
    variant: checkToken(variant, "variant"),
    name: checkToken(name, "name"),
    value: checkNumber(value, "value"),
    unit: checkToken(unit, "unit"),
    decision_id: decisionId === null ? null : checkToken(decisionId, "decision_id"),
  });
}

/**
 * The control state a control message sets, or null: KillSwitch, Resume and ConfigChange
 * carry the whole state after them (`after`), so the latest one per rollout is the state.
 * Other control kinds (escalation, recheck, would_kill...) do not change it.
 */
export function stateFromCommand(event) {
  if (!event || typeof event !== "object" || !STATE_COMMANDS.includes(event.kind)) return null;
  if (typeof event.rollout !== "string" || !event.after || typeof event.after !== "object") return null;
  return { rollout: event.rollout, state: { ...DEFAULT_STATE, ...event.after } };
}
