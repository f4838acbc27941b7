// Verifying the engine's signature of control commands, with Node's built-in crypto only.
//
// The engine signs every message it publishes on ro.ctl.<rollout>.<command> with Ed25519
// (engine/stack/signing.py; what is signed: engine/sdk/signatures.py) and sends two headers:
//
//   Ro-Sig-Key: <key id>   first 16 hex digits of sha256(raw 32-byte public key)
//   Ro-Sig:     <base64 of the 64-byte signature over "ro-sig-v1\n" + subject + "\n" + payload>
//
// The subject is signed without the partition number a partitioned log appends. Public
// keys come as the engine's key ring ({"keys": [{"id", "public_key"}], "current"}): the file
// DATA_DIR/signing-keys.json, or KV ro_state key engine.signing_keys.
//
// check() returns null for a message to apply, else why it is refused: "unsigned",
// "unknown_key" or "bad_signature". With requireSigned (secure mode) all three are refused;
// without it only a bad signature by a known key is (the Python SDK's rule).

import { createHash, createPublicKey, verify } from "node:crypto";

export const KEY_HEADER = "Ro-Sig-Key";
export const SIG_HEADER = "Ro-Sig";
const DOMAIN = Buffer.from("ro-sig-v1\n");

/** The id of a raw 32-byte Ed25519 public key: 16 hex digits of its sha256. */
export function keyId(raw) {
  return createHash("sha256").update(raw).digest("hex").slice(0, 16);
}

/** What a signature covers: the domain tag, the subject (partition number dropped), the payload. */
export function signedBytes(subject, data) {
  let parts = String(subject).split(".");
  if (parts.length === 5 && (parts[1] === "evt" || parts[1] === "ctl") && /^\d+$/.test(parts[4])) parts = parts.slice(0, 4);
  if (parts.length !== 4 || parts[0] !== "ro" || parts[1] !== "ctl") {
    throw new Error(`${subject} is not a control subject (ro.ctl.<rollout>.<command>)`);
  }
  return Buffer.concat([DOMAIN, Buffer.from(`${parts.join(".")}\n`), Buffer.from(data)]);
}

export class ControlVerifier {
  /**
   * @param {object} options
   * @param {boolean} options.requireSigned refuse unsigned and unknown-key commands too (secure mode)
   * @param {object} [options.ring] the engine's key ring ({keys: [{id, public_key}]})
   */
  constructor({ requireSigned, ring } = {}) {
    this.requireSigned = Boolean(requireSigned);
    this.keys = new Map();
    if (ring) this.add(ring);
  }

  /** Trust every key of `ring`; a malformed entry is reported and skipped. */
  add(ring) {
    for (const entry of ring?.keys ?? []) {
      try {
        const raw = Buffer.from(entry.public_key, "base64");
        if (raw.length !== 32) throw new Error(`public key of ${entry.id} is ${raw.length} bytes, not 32`);
        if (keyId(raw) !== entry.id) throw new Error(`id ${entry.id} is not the id of its key (${keyId(raw)})`);
        const jwk = { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") };
        this.keys.set(entry.id, createPublicKey({ key: jwk, format: "jwk" }));
      } catch (err) {
        console.error(`rollout client: ignoring a malformed public key in the signing key ring: ${err.message}`);
      }
    }
  }

  /** null if the message may be applied, else "unsigned", "unknown_key" or "bad_signature". */
  check(subject, data, headers) {
    const kid = header(headers, KEY_HEADER);
    const signature = header(headers, SIG_HEADER);
    if (!kid || !signature) return this.requireSigned ? "unsigned" : null;
    const key = this.keys.get(kid);
    if (!key) return this.requireSigned ? "unknown_key" : null;
    try {
      return verify(null, signedBytes(subject, data), key, Buffer.from(signature, "base64")) ? null : "bad_signature";
    } catch {
      return "bad_signature"; // a subject outside the map, a signature of the wrong length
    }
  }
}

/** A header's value from a nats.js MsgHdrs, a Map or a plain object (absent: ""). */
function header(headers, name) {
  if (!headers) return "";
  if (typeof headers.get === "function") return headers.get(name) || "";
  return headers[name] || "";
}
