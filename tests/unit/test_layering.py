"""The layering the code keeps, read from the imports with ``ast``: each failure names file:line.

Dependencies run one way: ``bench -> engine -> consumers -> events``.

- ``events/`` (the contract) imports nothing of the project outside ``events/``;
- ``consumers/`` (pure folds and their runtime) imports only ``events/`` and itself: the
  runtime gets its settings, connection and metrics passed in by engine code;
- the fold (``consumers/folding.py``) does no I/O: nothing it imports, directly or not,
  touches SQLite, NATS or the runtime;
- ``engine/sdk`` (what a service installs) imports none of the engine's other rooms;
  nothing imports ``engine/cli`` but the CLI itself;
- no import cycles, counting imports inside functions (they hide edges from readers);
- first-party imports inside functions only in ``engine/cli``: ``rollout`` imports every
  command module to build its parser, so a command imports the statistics libraries
  (scipy, numpy) when it runs, not for ``rollout --help``;
- no module over 400 lines in ``engine/``, ``consumers/``, ``events/``: one job each.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "rollout_engine"
FOLDERS = ("engine", "consumers", "events")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module (``rollout_engine.consumers.runtime``)."""
    target: str
    """The first-party module imported."""
    where: str
    """``path:line`` of the import statement."""
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))}


MODULES = _modules()


def _resolve(target: str) -> str:
    """The module a dotted import names: ``pkg.mod.Name`` -> ``pkg.mod`` when that is a module."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    inside_function: set[int] = set()
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside_function |= {id(sub) for sub in ast.walk(node) if sub is not node}
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == PACKAGE:
                yield Import(module, _resolve(name), f"{path.relative_to(ROOT)}:{node.lineno}",
                             id(node) in inside_function, id(node) in type_checking)


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _offending(predicate) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(f"{imp.where} imports {imp.target}" for imp in IMPORTS if predicate(imp))


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_events_import_nothing_of_the_project_outside_events() -> None:
    events = f"{PACKAGE}.events"
    assert _offending(lambda i: _within(i.module, events) and not _within(i.target, events)) == []


def test_consumers_import_only_events_and_themselves() -> None:
    consumers, events = f"{PACKAGE}.consumers", f"{PACKAGE}.events"
    assert _offending(lambda i: _within(i.module, consumers) and not _within(i.target, consumers, events)) == []


def _closure(module: str) -> dict[str, str]:
    """Every first-party module ``module`` imports at run time, directly or not, with where from."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for imp in IMPORTS:
            if imp.module == current and not imp.type_checking and imp.target not in seen:
                seen[imp.target] = imp.where
                todo.append(imp.target)
    return seen


def test_the_fold_does_no_io() -> None:
    io = {f"{PACKAGE}.consumers.{name}" for name in ("store", "runtime", "jetstream", "mirror", "consumer")}
    reached = _closure(f"{PACKAGE}.consumers.folding")
    assert sorted(f"{where} imports {target}" for target, where in reached.items() if target in io) == []


def test_the_sdk_room_needs_no_other_room_of_the_engine() -> None:
    sdk = f"{PACKAGE}.engine.sdk"
    rooms = [f"{PACKAGE}.engine.{room}" for room in ("stack", "api", "logtools", "cli")]
    assert _offending(lambda i: _within(i.module, sdk) and _within(i.target, *rooms)) == []


def test_only_the_cli_imports_the_cli() -> None:
    cli = f"{PACKAGE}.engine.cli"
    assert _offending(lambda i: not _within(i.module, cli) and _within(i.target, cli)) == []


def test_first_party_imports_inside_functions_only_in_cli_commands() -> None:
    cli = f"{PACKAGE}.engine.cli"
    assert _offending(lambda i: i.in_function and not _within(i.module, cli)) == []


def test_no_import_cycles() -> None:
    graph: dict[str, dict[str, str]] = {}
    for imp in IMPORTS:
        if not imp.type_checking and imp.target != imp.module and not _within(imp.module, imp.target):
            graph.setdefault(imp.module, {}).setdefault(imp.target, imp.where)
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, {}):
            if state.get(target) == 1:
                loop = [*path[path.index(target):], target]
                cycles.append(" -> ".join(f"{graph[a][b]} ({b})" for a, b in itertools.pairwise(loop)))
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
    assert cycles == []


def test_no_module_is_over_400_lines() -> None:
    long = sorted(f"{path.relative_to(ROOT)}: {n} lines (split it by job below {MAX_LINES})"
                  for path in MODULES.values() if (n := len(path.read_text().splitlines())) > MAX_LINES)
    assert long == []


def test_the_where_things_live_table_matches_the_tree() -> None:
    """docs/architecture.md names every package folder and every module in it, in its row."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    missing = []
    for folder in sorted({path.parent for path in MODULES.values()}):
        key = f"{folder.relative_to(ROOT)}/"
        if key not in rows:
            missing.append(f"no row for {key}")
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py" and f"`{path.name}`" not in rows[key]:
                missing.append(f"{path.relative_to(ROOT)} is not in the row of {key}")
    assert missing == []
