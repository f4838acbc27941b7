"""The demo's acknowledgements: replicas of the demo service, and who applied the kill.

A real service runs several instances; the demo's serves traffic from one and starts
:data:`REPLICAS` idle ones beside it, so "applied by 3 of 3 instances in 1.2 ms" after
the kill says what on-call wants to know (docs/sdk.md, "Acknowledgements").
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rollout_engine.engine.api.control_log import read_control
from rollout_engine.engine.api.propagation import wait_applied
from rollout_engine.engine.sdk.client import RolloutClient
from rollout_engine.engine.settings import Settings

__all__ = ["REPLICAS", "applied_line", "close_replicas", "kill_propagation", "start_replicas"]

REPLICAS = 2
"""Idle instances of the demo service beside the one serving traffic."""
WAIT_S = 5.0


async def start_replicas(settings: Settings, data_dir: Path, producer: str, count: int = REPLICAS) -> list[RolloutClient]:
    """``count`` more instances of ``producer``, each with its own outbox file."""
    return [await RolloutClient(settings, producer=producer, outbox_path=data_dir / f"outbox-replica-{i}.sqlite").start()
            for i in range(count)]


async def close_replicas(replicas: list[RolloutClient]) -> None:
    for client in replicas:
        with contextlib.suppress(Exception):
            await client.close(2.0)


async def kill_propagation(js: Any, rollout: str) -> dict[str, Any]:
    """Wait (up to a few seconds) until every live instance applied the rollout's current
    revision, the kill; its propagation as ``rollout status --json`` shows it."""
    view = await read_control(js, rollout)
    command = view.command
    result = await wait_applied(js, rollout, view.command_seq, WAIT_S,
                                command="kill_switch" if command is not None else "",
                                command_id=getattr(command, "id", ""))
    return result.to_json()


def applied_line(section: dict[str, Any]) -> str:
    """``kill switch applied by 3 of 3 instances in 1.2 ms`` (the slowest instance's time)."""
    text = f"kill switch applied by {section['applied']} of {section['following']} instances"
    if section.get("slowest_ms") is not None:
        text += f" in {section['slowest_ms']:.1f} ms"
    if section.get("lagging"):
        text += f"; {section['lagging']} still lagging (see `rollout status`)"
    return text
