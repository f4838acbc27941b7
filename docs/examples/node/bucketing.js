// Bucketing from the command line, to compare with the Python SDK:
// reads {"units": [[rollout, unit], ...], "pcts": [...]} as JSON on stdin and writes
// {"buckets": [...], "thresholds": [...]} (tests/integration/test_node_client.py).

import { bucket, threshold } from "./src/assignment.js";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
process.stdout.write(JSON.stringify({
  buckets: input.units.map(([rollout, unit]) => bucket(rollout, unit)),
  thresholds: (input.pcts ?? []).map(threshold),
}));
