"""``rollout schemas``: write (or check) the JSON Schema of every event type."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from engine.cli.common import CliError
from events.schema import EVENT_TYPES, kind_of

__all__ = ["register", "render_schemas"]


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
        out[name] = msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
    return out


def _run(args: argparse.Namespace) -> int:
    target = Path(args.out)
    rendered = render_schemas()
    if args.check:
        stale = [n for n, body in rendered.items() if not (target / n).exists() or (target / n).read_bytes() != body]
        extra = sorted(p.name for p in target.glob("*.schema.json") if p.name not in rendered)
        if stale or extra:
            raise CliError(f"schemas in {target} are stale: {stale + extra}; run `make schemas`")
        print(f"{len(rendered)} schemas in {target} are up to date")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    for name, body in rendered.items():
        (target / name).write_bytes(body)
    sys.stdout.write(f"wrote {len(rendered)} schemas to {target}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("schemas", help="write the JSON Schema of every event type", description=__doc__)
    parser.add_argument("--out", default="docs/schemas", help="output directory (default: docs/schemas)")
    parser.add_argument("--check", action="store_true", help="fail if the files differ from the Structs")
    parser.set_defaults(handler=_run)
