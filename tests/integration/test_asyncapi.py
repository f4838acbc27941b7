"""The AsyncAPI document: generated from the contract, fresh, and accepted by the official
AsyncAPI parser (@asyncapi/parser, from npm) with no error and no warning."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from rollout_engine.engine.api.client import ENDPOINTS
from rollout_engine.engine.cli.schemas import stale_asyncapi
from rollout_engine.events import subjects
from tests.integration.npm import CONTRACT_CHECKS, ROOT, run_json

DOCUMENT = ROOT / "docs" / "asyncapi.json"
ERROR, WARNING = 0, 1
TOLERATED_INFO = {"asyncapi-latest-version"}
"""The parser's one remark (severity information): 3.1.0 exists; this document is the 3.0.0 asked for."""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The parser's reports on the committed document and on a copy with a broken payload $ref
    (one node run: loading the parser's rulesets takes seconds)."""
    broken_dir = tmp_path_factory.mktemp("broken-asyncapi")
    shutil.copytree(ROOT / "docs" / "schemas", broken_dir / "schemas")
    document = json.loads(DOCUMENT.read_text())
    document["components"]["messages"]["Decision"]["payload"] = {"$ref": "./schemas/nothing.schema.json"}
    broken = broken_dir / "asyncapi.json"
    broken.write_text(json.dumps(document))
    reports = run_json(CONTRACT_CHECKS, "validate-asyncapi.mjs", str(DOCUMENT), str(broken))
    return {"committed": reports[str(DOCUMENT)], "broken": reports[str(broken)]}


def test_committed_document_matches_the_contract() -> None:
    assert not stale_asyncapi(ROOT / "docs" / "schemas"), "docs/asyncapi.json is stale: run `make schemas`"
    document = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert set(ENDPOINTS) <= set(json.dumps(document).split('"')), "every API endpoint is in the document"


def test_official_parser_finds_no_error_or_warning(parsed: dict[str, Any]) -> None:
    report = parsed["committed"]
    assert report["parsed"] is True
    assert [d for d in report["diagnostics"] if d["severity"] in (ERROR, WARNING)] == []
    assert {d["code"] for d in report["diagnostics"]} <= TOLERATED_INFO
    # every subject family: producer kinds, control commands, tick, stats, the rollback evaluation, dlq, kv,
    # acks, api and its reply
    assert report["channels"] == len(subjects.PRODUCER_KINDS) + len(subjects.CONTROL_COMMANDS) + 8
    assert report["messages"] >= 2 * len(subjects.PRODUCER_KINDS) + len(subjects.CONTROL_COMMANDS)


def test_parser_rejects_a_broken_payload_reference(parsed: dict[str, Any]) -> None:
    """The check is not vacuous: a payload pointing at no schema is an error."""
    assert any(d["severity"] == ERROR for d in parsed["broken"]["diagnostics"])
