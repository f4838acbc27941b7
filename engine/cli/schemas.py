"""``rollout schemas``: write (or check) the JSON Schema of every event type, and the
AsyncAPI document of every subject beside them (``engine/cli/asyncapi.py``).

Each event type gets one file in ``--out`` (default docs/schemas), its descriptions taken
from the code. With
``--check`` nothing is written: the command fails when a committed schema no longer
says what the code accepts (compared as parsed JSON, not byte for byte).
"""

# Descriptions come from the Structs' docstrings. How a docstring's indentation reaches
# the schema is a detail of msgspec that changed in 0.23 (it began to dedent continuation
# lines), so every description is rewritten here to one canonical form: paragraphs of
# single spaces, separated by a blank line. ``--check`` compares what the schemas mean
# (parsed JSON, descriptions in that form), never the bytes of another renderer.

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from rollout_engine.engine.cli.asyncapi import ASYNCAPI_FILE, render_asyncapi, render_asyncapi_bytes
from rollout_engine.engine.cli.common import CliError
from rollout_engine.engine.cli.contract_text import canonical_schema
from rollout_engine.events.schema import EVENT_TYPES, kind_of

__all__ = ["register", "render_schemas", "stale_asyncapi", "stale_schemas"]


def render_schemas() -> dict[str, bytes]:
    """File name -> JSON Schema bytes, one per event type, generated from the Structs."""
    out: dict[str, bytes] = {}
    for event_type in EVENT_TYPES:
        _, components = msgspec.json.schema_components([event_type], ref_template="#/$defs/{name}")
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": event_type.__name__,
            **components[event_type.__name__],
            "$defs": {k: v for k, v in components.items() if k != event_type.__name__},
        }
        name = f"{kind_of(event_type)}.schema.json"  # type: ignore[arg-type]
        out[name] = msgspec.json.format(msgspec.json.encode(canonical_schema(document)), indent=2) + b"\n"
    return out


def stale_schemas(target: Path) -> list[str]:
    """Files of ``target`` whose meaning differs from the Structs, plus missing and extra ones."""
    rendered = render_schemas()
    stale: list[str] = []
    for name, body in rendered.items():
        path = target / name
        try:
            committed = canonical_schema(json.loads(path.read_bytes()))
        except (OSError, ValueError):
            stale.append(name)
            continue
        if committed != json.loads(body):
            stale.append(name)
    return stale + sorted(p.name for p in target.glob("*.schema.json") if p.name not in rendered)


def stale_asyncapi(target: Path) -> bool:
    """True when the AsyncAPI document beside ``target`` differs from the contract (or is missing)."""
    try:
        committed = json.loads((target.parent / ASYNCAPI_FILE).read_bytes())
    except (OSError, ValueError):
        return True
    return committed != json.loads(msgspec.json.encode(render_asyncapi(target.name)))


def _run(args: argparse.Namespace) -> int:
    target = Path(args.out)
    rendered = render_schemas()
    document = target.parent / ASYNCAPI_FILE
    if args.check:
        stale = stale_schemas(target) + ([str(document)] if stale_asyncapi(target) else [])
        if stale:
            raise CliError(f"schemas in {target} are stale: {stale}; run `make schemas`")
        print(f"{len(rendered)} schemas in {target} and {document} are up to date")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    for name, body in rendered.items():
        (target / name).write_bytes(body)
    document.write_bytes(render_asyncapi_bytes(target.name))
    sys.stdout.write(f"wrote {len(rendered)} schemas to {target} and the AsyncAPI document {document}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("schemas", help="write the JSON Schema of every event type and the AsyncAPI document",
                            description=__doc__)
    parser.add_argument("--out", default="docs/schemas",
                        help="output directory (default: docs/schemas); asyncapi.json goes to its parent")
    parser.add_argument("--check", action="store_true", help="fail if the files differ from the Structs")
    parser.set_defaults(handler=_run)
