// RolloutClient for Node.js: what a service needs to take part in a rollout.
//
//   const client = await new RolloutClient({ servers: "nats://127.0.0.1:4222", producer: "checkout" }).start();
//   const d = client.decide("checkout-v2", userId);        // sync, no network
//   await client.recordOutcome("checkout-v2", d.id, d.variant, "win", { quality: 93 });
//   await client.close();
//
// The same behaviour as the Python SDK (docs/sdk.md), in less code:
// * control state follows the log: an ordered push consumer on RO_LOG, filter ro.ctl.>,
//   deliver policy last-per-subject, read to its end before start() returns; every
//   KillSwitch, Resume and ConfigChange then arrives as it is stored. The consumer is
//   named (sdk-node-<producer>-<random>_<n>) and created through the filtered create
//   subject, and deliveries use the connection's inbox prefix, so the `app` credential of
//   secure mode is enough (docs/security.md);
// * decide()/assign() pick with the same murmur3 bucketing (src/assignment.js) against the
//   state held in memory and buffer the Decision;
// * events are batched per subject (a msgpack array, at most 250 events or 5 ms) and
//   published to JetStream with Nats-Msg-Id = first event id + count, so a retry is
//   stored once. Unlike the Python SDK there is no SQLite outbox: while NATS is away
//   batches wait in memory (bounded by maxBuffered, then record* throws) and are retried;
// * with requireSigned (set it in secure mode) every control message's Ed25519 signature is
//   checked with Node's built-in crypto (src/signatures.js) against the engine's key ring
//   (signingKeys, else KV ro_state engine.signing_keys): an unsigned, unknown-key or badly
//   signed resume or config is refused and never applied; such a kill switch still stops
//   the candidate (stopping is always safe), as in the Python SDK.

import { randomBytes } from "node:crypto";

import { decode, encode } from "@msgpack/msgpack";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";

import { bucket, pick, splitOf } from "./assignment.js";
import { ControlVerifier } from "./signatures.js";
import {
  CONTROL_ALL, DEFAULT_STATE, LOG_STREAM, checkToken, decision, eventSubject, metric, outcome, stateFromCommand,
} from "./events.js";

const MAX_BATCH = 1000;

export class RolloutClient {
  /**
   * @param {object} options
   * @param {string} options.servers NATS URL(s), comma-separated
   * @param {string} options.producer this service's name (a token), stamped on every event
   * @param {string} [options.user] NATS user (secure mode: the `app` role); [options.pass] its password
   * @param {number} [options.batchSize=250] events per message at most
   * @param {number} [options.lingerMs=5] a batch is sent this long after its first event
   * @param {number} [options.maxBuffered=100000] events held in memory at most
   * @param {(rollout: string, state: object) => void} [options.onChange] after each state change
   * @param {boolean} [options.requireSigned=false] refuse control commands not signed by the engine (secure mode)
   * @param {object} [options.signingKeys] the engine's key ring (DATA_DIR/signing-keys.json); default: KV
   */
  constructor({ servers, producer, user, pass, batchSize = 250, lingerMs = 5, maxBuffered = 100_000, onChange,
    requireSigned = false, signingKeys = null } = {}) {
    this.servers = String(servers || "nats://127.0.0.1:4222").split(",").map((s) => s.trim()).filter(Boolean);
    this.producer = checkToken(producer, "producer");
    this.user = user;
    this.pass = pass;
    this.batchSize = Math.min(batchSize, MAX_BATCH);
    this.lingerMs = lingerMs;
    this.maxBuffered = maxBuffered;
    this.onChange = onChange;
    this.pinnedKeys = Boolean(signingKeys);
    this.verifier = requireSigned || signingKeys ? new ControlVerifier({ requireSigned, ring: signingKeys }) : null;
    this.refused = { unsigned: 0, unknown_key: 0, bad_signature: 0 };
    this.states = new Map();
    this.splits = new Map();
    this.stateSeq = new Map();
    this.open = new Map(); // subject -> events not yet sealed
    this.pending = []; // sealed batches waiting for an ack: {id, subject, payload, count}
    this.buffered = 0;
    this.timer = null;
    this.sending = null;
  }

  /** Connect and read the control state to the end of the log. */
  async start(catchUpTimeoutMs = 5000) {
    this.nc = await connect({
      servers: this.servers,
      name: `sdk-node-${this.producer}`,
      user: this.user,
      pass: this.pass,
      inboxPrefix: this.user ? `_INBOX_${this.user}` : undefined,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
    this.js = jetstream(this.nc);
    if (this.verifier && !this.pinnedKeys) await this.readKeys();
    const consumer = await this.js.consumers.getPushConsumer(LOG_STREAM, {
      name_prefix: `sdk-node-${this.producer}-${randomBytes(4).toString("hex")}`,
      deliver_prefix: this.user ? `_INBOX_${this.user}.ctl` : undefined,
      filter_subjects: CONTROL_ALL,
      deliver_policy: DeliverPolicy.LastPerSubject,
    });
    const info = await consumer.info(true);
    let caughtUp;
    const ready = new Promise((resolve) => { caughtUp = resolve; });
    if (info.num_pending === 0) caughtUp();
    this.messages = await consumer.consume();
    this.following = (async () => {
      for await (const msg of this.messages) {
        let refusal = null;
        if (this.verifier) {
          refusal = this.verifier.check(msg.subject, msg.data, msg.headers);
          if (refusal === "unknown_key" && !this.pinnedKeys) { // a rotation this instance has not seen yet
            await this.readKeys();
            refusal = this.verifier.check(msg.subject, msg.data, msg.headers);
          }
        }
        this.fold(msg.data, msg.seq, refusal);
        if (msg.info.pending === 0) caughtUp();
      }
    })();
    let timeout;
    await Promise.race([
      ready,
      new Promise((_, reject) => {
        timeout = setTimeout(() => reject(new Error(
          `control state not read within ${catchUpTimeoutMs} ms; has \`rollout up\` provisioned ${LOG_STREAM}?`)),
        catchUpTimeoutMs);
      }),
    ]).finally(() => clearTimeout(timeout));
    return this;
  }

  /** Add the engine's key ring from KV ro_state (engine.signing_keys) to the verifier. */
  async readKeys() {
    try {
      const jsm = await jetstreamManager(this.nc);
      const stored = await jsm.streams.getMessage("KV_ro_state", { last_by_subj: "$KV.ro_state.engine.signing_keys" });
      if (stored) this.verifier.add(stored.json());
    } catch (err) {
      console.error(`rollout client: could not read the signing key ring from KV ro_state: ${err.message}`);
    }
  }

  /** Fold one control message; `refusal` (from the verifier) limits it to stopping the candidate. */
  fold(data, seq, refusal = null) {
    let decoded;
    try {
      decoded = decode(data);
    } catch (err) {
      console.error(`rollout client: ignoring undecodable control message at seq ${seq}: ${err.message}`);
      return;
    }
    if (refusal) {
      this.refused[refusal] = (this.refused[refusal] ?? 0) + 1;
      console.error(`rollout client: REFUSED control message at seq ${seq} (${refusal}): not applied as sent `
        + "(a kill switch only stops the candidate); only the engine's signing key may issue control commands");
    }
    for (const event of Array.isArray(decoded) ? decoded : [decoded]) {
      let change = stateFromCommand(event);
      if (change !== null && refusal) {
        change = event.kind === "kill_switch" // stopping is always safe: keep the rest of the state held
          ? { rollout: change.rollout, state: { ...this.state(change.rollout), kill_switch: true, canary_pct: 0 } }
          : null;
      }
      if (change === null || seq <= (this.stateSeq.get(change.rollout) ?? 0)) continue;
      this.stateSeq.set(change.rollout, seq);
      this.states.set(change.rollout, change.state);
      this.splits.set(change.rollout, splitOf(change.state));
      if (this.onChange) this.onChange(change.rollout, change.state);
    }
  }

  /** The rollout's current control state (the safe default before any command). */
  state(rollout) {
    return this.states.get(rollout) ?? DEFAULT_STATE;
  }

  /** Choose the unit's variant, buffer the Decision and return it (.variant, .id, .reason). */
  decide(rollout, unit, { context = null, decisionId = null } = {}) {
    const state = this.state(rollout);
    const split = this.splits.get(rollout) ?? splitOf(state);
    const choice = pick(split, bucket(rollout, unit));
    const event = decision({ rollout, producer: this.producer, unit, choice, state, context, decisionId });
    this.add(event, eventSubject(rollout, "decision"));
    return event;
  }

  /** The variant serving `unit` in `rollout` (see decide). */
  assign(rollout, unit) {
    return this.decide(rollout, unit).variant;
  }

  recordOutcome(rollout, decisionId, variant, verdict, { quality, reward, confidence } = {}) {
    const event = outcome({ rollout, producer: this.producer, decisionId, variant, verdict, quality, reward, confidence });
    this.add(event, eventSubject(rollout, "outcome"));
    return event;
  }

  recordMetric(rollout, variant, name, value, { unit = "1", decisionId = null } = {}) {
    const event = metric({ rollout, producer: this.producer, variant, name, value, unit, decisionId });
    this.add(event, eventSubject(rollout, "metric"));
    return event;
  }

  // --- publishing -------------------------------------------------------------------------
  add(event, subject) {
    if (this.buffered >= this.maxBuffered) {
      throw new Error(`buffer full: ${this.buffered} events wait for JetStream (maxBuffered=${this.maxBuffered})`);
    }
    let events = this.open.get(subject);
    if (!events) this.open.set(subject, (events = []));
    events.push(event);
    this.buffered += 1;
    if (events.length >= this.batchSize) this.seal(subject);
    if (this.timer === null) this.timer = setTimeout(() => { this.timer = null; this.sealAll(); }, this.lingerMs);
  }

  seal(subject) {
    const events = this.open.get(subject);
    if (!events || events.length === 0) return;
    this.open.delete(subject);
    this.pending.push({ id: `${events[0].id}-${events.length}`, subject, payload: encode(events), count: events.length });
    this.kick();
  }

  sealAll() {
    for (const subject of [...this.open.keys()]) this.seal(subject);
  }

  kick() {
    if (this.sending === null) this.sending = this.sendLoop().finally(() => { this.sending = null; });
  }

  async sendLoop() {
    let failures = 0;
    while (this.pending.length > 0) {
      const window = this.pending.slice(0, 64);
      const acks = await Promise.allSettled(window.map((b) => this.js.publish(b.subject, b.payload, { msgID: b.id, timeout: 2000 })));
      let sent = 0;
      while (sent < acks.length && acks[sent].status === "fulfilled") sent += 1;
      for (const b of this.pending.splice(0, sent)) this.buffered -= b.count;
      if (sent < acks.length) { // retry from the first unacked batch, same ids (acked ones de-duplicate)
        failures += 1;
        if (this.closed) return;
        await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** failures)));
      } else {
        failures = 0;
      }
    }
  }

  /** Send everything buffered now and wait for the acks (false: not all acked within timeoutMs). */
  async flush(timeoutMs = 10_000) {
    if (this.timer !== null) { clearTimeout(this.timer); this.timer = null; }
    this.sealAll();
    const deadline = Date.now() + timeoutMs;
    while (this.pending.length > 0 && Date.now() < deadline) {
      this.kick();
      await Promise.race([this.sending, new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())))]);
    }
    return this.pending.length === 0;
  }

  /** Flush (what is still unacked after timeoutMs is lost: no outbox here), stop following, disconnect. */
  async close(timeoutMs = 10_000) {
    await this.flush(timeoutMs);
    this.closed = true;
    if (this.messages) await this.messages.close();
    await this.following;
    await this.nc.drain();
  }
}
