"""Every module of ``bench/`` imports: ``make bench`` runs only on demand, so a module that
no longer loads (a misplaced decorator, a renamed import) would otherwise wait for the
next person who measures."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__, "bench."))


def test_the_bench_package_has_its_groups() -> None:
    assert {"bench.run", "bench.groups", "bench.bench_rollback", "bench.bench_replay", "bench.contention"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which it does not define"
