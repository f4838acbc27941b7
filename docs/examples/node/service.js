// An example Node.js service in a rollout: it serves requests with the variant the engine's
// control state assigns, records a decision, a latency metric and an outcome for each, and
// obeys the kill switch. Its candidate can be told to regress (--regress), so the engine's
// rollback consumer kills it: then every request is served by the baseline.
//
//   node service.js --rollout planner-v2 --regress
//
// The NATS URL comes from ROLLOUT_NATS_URL, else the file `rollout up` writes
// (DATA_DIR/nats.url, DATA_DIR from ROLLOUT_DATA_DIR, default "data"), else
// nats://127.0.0.1:4222: the order the Python settings use.
//
// It prints one JSON line per event worth seeing (ready, control, progress, done), which
// is what tests/integration/test_node_client.py reads. Flags: --rollout, --producer,
// --rate (requests/s, default 400), --regress, --after-kill N (stop after serving N
// requests under the kill switch, default 200), --max-seconds (default 60), --require-signed
// (secure mode: refuse control commands the engine did not sign, src/signatures.js; also
// ROLLOUT_REQUIRE_SIGNED=1; the public keys come from KV, or ROLLOUT_SIGNING_KEYS names the
// engine's signing-keys.json to pin them).

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { RolloutClient } from "./src/client.js";

function flags(argv) {
  const out = { rollout: "planner-v2", producer: "node-service", rate: 400, regress: false, afterKill: 200, maxSeconds: 60,
    requireSigned: false };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (key === "regress" || key === "requireSigned") { out[key] = true; continue; }
    if (!(key in out)) throw new Error(`unknown flag ${argv[i]}; see the comment at the top of service.js`);
    out[key] = typeof out[key] === "number" ? Number(argv[++i]) : argv[++i];
  }
  return out;
}

function natsUrl() {
  if (process.env.ROLLOUT_NATS_URL) return process.env.ROLLOUT_NATS_URL;
  const file = join(process.env.ROLLOUT_DATA_DIR || "data", "nats.url");
  return existsSync(file) ? readFileSync(file, "utf8").trim() : "nats://127.0.0.1:4222";
}

const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

/** A deterministic pseudo-random stream (mulberry32), so runs are reproducible. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What one request costs and how good it was; a regressing candidate is slower and worse. */
function serve(random, bad) {
  const latency = (600 + 300 * random()) * (bad ? 2.6 : 1.0);
  const quality = Math.min(100, Math.max(0, 92 - (bad ? 20 : 0) + 6 * (random() - 0.5)));
  const verdict = quality >= 85 ? "win" : quality < 75 ? "loss" : "neutral";
  return { latency, quality, verdict };
}

async function main() {
  const opts = flags(process.argv.slice(2));
  const client = new RolloutClient({
    servers: natsUrl(),
    producer: opts.producer,
    user: process.env.ROLLOUT_USER || undefined,
    pass: process.env.ROLLOUT_PASSWORD || undefined,
    onChange: (rollout, state) => say({ event: "control", rollout, state }),
    // secure mode: refuse control commands the engine did not sign (keys from KV, or a pinned ring file)
    requireSigned: opts.requireSigned || process.env.ROLLOUT_REQUIRE_SIGNED === "1",
    signingKeys: process.env.ROLLOUT_SIGNING_KEYS ? JSON.parse(readFileSync(process.env.ROLLOUT_SIGNING_KEYS, "utf8")) : null,
  });
  await client.start();
  say({ event: "ready", rollout: opts.rollout, state: client.state(opts.rollout) });
  const random = rng(7);
  const served = { baseline: 0, candidate: 0 };
  const underKill = { baseline: 0, candidate: 0 };
  const started = Date.now();
  let lastProgress = 0;
  const slice = 20; // ms
  while (Date.now() - started < opts.maxSeconds * 1000 && underKill.baseline + underKill.candidate < opts.afterKill) {
    for (let i = 0; i < (opts.rate * slice) / 1000; i += 1) {
      const state = client.state(opts.rollout);
      const d = client.decide(opts.rollout, `user-${Math.floor(random() * 100_000)}`);
      const role = d.variant === state.candidate ? "candidate" : "baseline";
      served[role] += 1;
      if (state.kill_switch) underKill[role] += 1;
      const r = serve(random, opts.regress && role === "candidate");
      client.recordMetric(opts.rollout, d.variant, "latency_ms", r.latency, { unit: "ms", decisionId: d.id });
      client.recordOutcome(opts.rollout, d.id, d.variant, r.verdict, { quality: r.quality });
    }
    if (Date.now() - lastProgress > 500) {
      lastProgress = Date.now();
      say({ event: "progress", served, under_kill_switch: underKill, state: client.state(opts.rollout) });
    }
    await new Promise((r) => setTimeout(r, slice));
  }
  const flushed = await client.flush();
  say({ event: "done", served, under_kill_switch: underKill, state: client.state(opts.rollout), flushed,
    refused: client.refused });
  await client.close();
}

main().catch((err) => {
  console.error(`node service: ${err.stack || err}`);
  process.exit(1);
});
