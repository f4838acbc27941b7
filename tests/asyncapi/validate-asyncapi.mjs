// Parse AsyncAPI documents with the official parser and print every diagnostic as JSON:
//   node validate-asyncapi.mjs ../../docs/asyncapi.json [more.json ...]
// {"<file>": {"parsed": true, "diagnostics": [...], "channels": N, "operations": N, "messages": N}}
// Run by tests/integration/test_asyncapi.py, which asserts there is no error or warning.
// Several files in one run: loading the parser's rulesets costs seconds.

import { Parser, fromFile } from "@asyncapi/parser";

const parser = new Parser();
const reports = {};
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  reports[file] = {
    parsed: Boolean(document),
    diagnostics: diagnostics.map((d) => ({ severity: d.severity, code: d.code, message: d.message, path: d.path.join("/") })),
    channels: document ? document.channels().length : 0,
    operations: document ? document.operations().length : 0,
    messages: document ? document.components().messages().length : 0,
  };
}
process.stdout.write(JSON.stringify(reports));
