"""Every shell command shown in README.md and docs/ is run here, or is covered by a named
test, or is marked as needing docker. None rots.

Commands run in document order, one file at a time, against a real `rollout up`
(embedded server, every consumer, the API) in a scratch directory that links the
repository's `docs/` and `.venv/` (and holds a copy of `compose/`), so relative paths in
the docs work and nothing is written into the checkout.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
DOCKER = "needs docker"

# Commands a test cannot run inline (they run until Ctrl-C, or they ARE the test suite):
# each names where it is proven.
COVERED = {
    "make test": "CI itself: .ci/run calls make test",
    "make run": "tests/integration/test_demo.py runs `rollout demo`, which is all make run does after bootstrapping",
    "rollout up": "tests/integration/test_stack.py starts `rollout up`, checks status and Ctrl-C",
    "make up": "tests/integration/test_stack.py starts `rollout up`",
    "make bench": "make bench itself (not part of make test)",
    "make soak": "make soak itself (not part of make test)",
    "make node": "make test runs it first (npm ci of docs/examples/node and of tests/asyncapi/)",
}


def _commands(path: Path) -> list[str]:
    commands: list[str] = []
    for block in FENCE.findall(path.read_text()):
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if not line or (line.startswith("#") and not pending):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append((pending + line).strip())
            pending = ""
    return commands


def _doc_files() -> list[Path]:
    # node_modules: npm packages' own READMEs (make node), not this project's docs
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "node_modules" not in p.parts)]


def _strip_comment(command: str) -> str:
    try:
        parts = shlex.split(command, comments=True)
    except ValueError:
        return command
    return shlex.join(parts)


def _normalized(command: str) -> str:
    bare = _strip_comment(command)
    return re.sub(r"^(\.venv/bin/)", "", bare)


def _covered_by(command: str) -> str | None:
    bare = _normalized(command)
    if DOCKER in command:
        return "marked: needs docker"
    for prefix, reason in COVERED.items():
        if bare == prefix or (bare.startswith(prefix + " ") and prefix in ("rollout up",)):
            return reason
    if " --follow" in bare:
        return "follows forever: tests/integration/test_cli.py covers --follow"
    if " --watch" in bare:
        return "follows until Ctrl-C: tests/integration/test_verbs_watch_wait.py covers status --watch"
    if bare.startswith("rollout wait ") and "--for healthy" in bare:
        return "needs traffic judged healthy: tests/integration/test_verbs_watch_wait.py covers wait --for healthy"
    if bare.startswith("promtool ") and bare.endswith(("alerts.yml", "alerts.test.yml")):
        return "runs in compose/prometheus/: tests/integration/test_alert_rules.py runs both"
    if bare.startswith("promtool ") and bare.endswith(("propagation.rules.yml", "propagation.rules.test.yml")):
        return "runs in compose/prometheus/: tests/integration/test_propagation_rules.py runs both"
    words = bare.split()
    if words[:3] == ["python", "-m", "pytest"] or words[:2] == ["pytest", "-q"]:
        missing = [w for w in words if w.startswith("tests/") and not (ROOT / w.split("::")[0]).exists()]
        assert not missing, f"{command!r} names test files that do not exist: {missing}"
        return "part of make test"
    if words[:2] == ["python", "-m"] and words[2].startswith("bench."):
        assert importlib.util.find_spec(words[2]) is not None, f"{command!r}: no module {words[2]}"
        return "a benchmark: make bench"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("docs-commands")
    (work / "docs").symlink_to(ROOT / "docs")
    # A copy, not a link: docs/compose.md writes compose/.env and re-renders the NATS config.
    shutil.copytree(ROOT / "compose", work / "compose", ignore=shutil.ignore_patterns(".env"))
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    data = work / "data"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ROLLOUT_DATA_DIR": str(data),
        "ROLLOUT_PORT": "0",
        "NO_COLOR": "1",
    }
    env.pop("ROLLOUT_NATS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "rollout_engine.engine.cli", "up"], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    deadline = time.monotonic() + 60
    # The API's own line, not a fixed sleep: on a loaded 2-core host importing it takes 3 s.
    while "rollout api: serving" not in line:
        line = up.stdout.readline()
        assert line or up.poll() is None, "rollout up exited early"
        assert time.monotonic() < deadline, "rollout up did not start its API within 60 s"
    time.sleep(1.0)  # the consumers come up
    yield work, env
    up.send_signal(signal.SIGINT)
    up.wait(timeout=30)


DOCS = [p for p in _doc_files() if _commands(p)]


@pytest.mark.slow
# A document runs each of its commands as a process (docs/operations.md: about 40, with 15 s
# of traffic and an export explained): 54 s alone, more than the suite's 120 s per test
# when two workers share the two cores.
@pytest.mark.timeout(360)
@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_documented_command_runs_or_is_covered(doc: Path, stack) -> None:
    work, env = stack
    env = dict(env)
    ran = 0
    for command in _commands(doc):
        if _covered_by(command):
            continue
        bare = _strip_comment(command)
        if bare.startswith("export "):
            name, _, value = bare.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0] if value else ""
            continue
        result = subprocess.run(["bash", "-c", bare], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{doc.name}: `{command}` failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        ran += 1
    assert ran or all(_covered_by(c) for c in _commands(doc))
