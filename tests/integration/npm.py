"""Running the repository's Node.js packages from tests: installed from their lock files.

``make test`` installs them first (``make node``: ``npm ci`` per package). A test run
without make installs a missing package the same way, so it never skips: a machine with
no Node.js fails with a message saying what to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NODE_EXAMPLE = ROOT / "docs" / "examples" / "node"
CONTRACT_CHECKS = ROOT / "tests" / "asyncapi"


def node() -> str:
    """The ``node`` executable (version 20 or later)."""
    found = shutil.which("node")
    assert found, "these tests need Node.js 20+ and npm on PATH (apt-get install nodejs npm), then `make node`"
    return found


def installed(package: Path) -> Path:
    """``package`` with its node_modules installed from package-lock.json (``npm ci``)."""
    if not (package / "node_modules" / ".installed").exists():
        npm = shutil.which("npm")
        assert npm, f"{package} needs npm to install its dependencies; run `make node`"
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=package, check=True, timeout=600)
        (package / "node_modules" / ".installed").touch()
    return package


def run_json(package: Path, script: str, *args: str, stdin: Any = None, timeout: float = 120) -> Any:
    """Run ``node script args`` in ``package``, feeding ``stdin`` as JSON; return its JSON output."""
    result = subprocess.run([node(), script, *args], cwd=installed(package), capture_output=True, timeout=timeout,
                            input=None if stdin is None else json.dumps(stdin).encode())
    assert result.returncode == 0, f"node {script} failed ({result.returncode}): {result.stderr.decode()[-2000:]}"
    return json.loads(result.stdout)
