"""The topology: every consumer the engine runs, what it reads and what it emits.

``rollout up`` starts one process per entry (``rollout consumer NAME``); ``rollout
replay`` folds a log through all of them. A consumer module registers itself here by
name; nothing else needs to know the list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollout_engine.consumers.consumer import Consumer, RuntimeSettings

__all__ = ["ConsumerSpec", "build", "get", "names", "specs"]


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """One consumer: its durable name, its module, and its one-line purpose.

    ``kill_path``: its fold decides kill switches, so its process asks for a higher CPU
    share at start (setting ``kill_path_nice``): on a busy host a kill must not queue
    behind other work."""

    name: str
    module: str
    summary: str
    kill_path: bool = False


_SPECS: dict[str, ConsumerSpec] = {}


def register(spec: ConsumerSpec) -> None:
    _SPECS[spec.name] = spec


def _load() -> None:
    # Modules listed here register themselves on import.
    for module in _MODULES:
        importlib.import_module(module)


_MODULES: list[str] = ["rollout_engine.consumers.control_consumer", "rollout_engine.consumers.stats_consumer", "rollout_engine.consumers.bandit.consumer",
                       "rollout_engine.consumers.verification_consumer", "rollout_engine.consumers.rollback.consumer",
                       "rollout_engine.consumers.notifier_consumer"]


def specs() -> list[ConsumerSpec]:
    _load()
    return list(_SPECS.values())


def names() -> list[str]:
    return [spec.name for spec in specs()]


def build(name: str, settings: RuntimeSettings | None = None) -> Consumer:
    """The consumer ``name`` built for ``settings`` (its module's ``build``); KeyError if unknown."""
    consumer: Consumer = importlib.import_module(get(name).module).build(settings)
    return consumer


def get(name: str) -> ConsumerSpec:
    _load()
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown consumer {name!r}; known: {sorted(_SPECS)}") from None
