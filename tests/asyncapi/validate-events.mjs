// Validate events (decoded from msgpack into JSON) against the JSON Schemas of docs/schemas
// with ajv, the JSON Schema validator of the JavaScript ecosystem:
//   echo '{"schemas": "../../docs/schemas", "events": [{"kind": "decision", ...}]}' | node validate-events.mjs
// Prints {"checked": N, "errors": [{"index": i, "kind": k, "errors": [...]}]}; an event whose
// kind has no schema is an error too. Run by tests/integration/test_node_client.py.

import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

import Ajv2020 from "ajv/dist/2020.js";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const ajv = new Ajv2020({ allErrors: true, strict: true });
const validators = new Map();
for (const file of readdirSync(input.schemas).filter((f) => f.endsWith(".schema.json"))) {
  validators.set(file.replace(".schema.json", ""), ajv.compile(JSON.parse(readFileSync(join(input.schemas, file), "utf8"))));
}
const errors = [];
input.events.forEach((event, index) => {
  const validate = validators.get(event.kind);
  if (!validate) errors.push({ index, kind: event.kind, errors: ["no schema for this kind"] });
  else if (!validate(event)) errors.push({ index, kind: event.kind, errors: validate.errors });
});
process.stdout.write(JSON.stringify({ checked: input.events.length, errors }));
