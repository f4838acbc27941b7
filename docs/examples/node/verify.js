// Reads {"ring", "requireSigned", "messages": [{"subject", "data" (base64), "headers"}]} as JSON
// on stdin, checks each message's signature and folds them in order into a client that never
// connects; prints {"verdicts": [null | "unsigned" | "unknown_key" | "bad_signature", ...],
// "states": {rollout: state}, "refused": {reason: count}}. The contract test
// (tests/integration/test_node_client.py) compares the verdicts with the Python SDK's.
import { RolloutClient } from "./src/client.js";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString());
const client = new RolloutClient({ producer: "verify", requireSigned: input.requireSigned, signingKeys: input.ring });
const verdicts = input.messages.map((m, i) => {
  const data = Buffer.from(m.data, "base64");
  const refusal = client.verifier.check(m.subject, data, m.headers);
  client.fold(data, i + 1, refusal);
  return refusal;
});
process.stdout.write(JSON.stringify({ verdicts, states: Object.fromEntries(client.states), refused: client.refused }));
