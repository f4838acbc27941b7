"""Descriptions in the generated contract documents, in one canonical form.

The JSON Schemas (``rollout schemas``) and the AsyncAPI document take their descriptions
from the events' docstrings; msgspec's rendering of indentation has changed between
versions, so both write the text through :func:`canonical_text` and a freshness check
compares meaning, not whitespace.
"""

from __future__ import annotations

__all__ = ["canonical_schema", "canonical_text"]


def canonical_text(text: str) -> str:
    """A docstring as paragraphs of single spaces: the same text whatever its indentation.

    >>> canonical_text("Engine time: windows\\n    move on ticks.\\n\\n  Replay too.")
    'Engine time: windows move on ticks.\\n\\nReplay too.'
    """
    paragraphs: list[list[str]] = [[]]
    for line in text.strip().splitlines():
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(words) for words in paragraphs if words)


def _canonical(node: object) -> object:
    """``node`` with every ``description`` in :func:`canonical_text` form."""
    if isinstance(node, dict):
        return {k: canonical_text(v) if k == "description" and isinstance(v, str) else _canonical(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    return node


def canonical_schema(node: object) -> object:
    """A JSON Schema with every ``description`` in :func:`canonical_text` form."""
    return _canonical(node)
