"""The compose stack: validated by a real compose implementation, its NATS config by a real server.

No Docker engine runs here: Debian's ``docker-compose`` parses and validates the file
(``docker-compose config``, .ci/run installs it); the mounted nats-server config is
checked with ``nats-server -t``, then started once and its per-role permissions enforced.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest
import yaml

from rollout_engine.consumers import registry
from rollout_engine.engine.cli import build_parser
from rollout_engine.engine.cli.secure import compose_env_text
from rollout_engine.engine.stack.security import (
    ROLES,
    env_reference,
    inbox_prefix,
    render_compose_config,
)
from rollout_engine.engine.stack.server import find_nats_server
from rollout_engine.events import subjects

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
NATS_CONF = COMPOSE / "nats" / "nats-server.conf"


def _compose_env() -> dict[str, str]:
    """Fresh secrets, as `rollout secure compose-env` writes them, in the environment."""
    pairs = [line.split("=", 1) for line in compose_env_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    return _compose_env()


@pytest.fixture(scope="module")
def compose_config(compose_env: dict[str, str]) -> dict:
    """The file as docker-compose resolves it (interpolated, merged, paths absolute)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: `apt-get install -y docker-compose` (.ci/run does it)"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RO_", "GRAFANA_"))}, **compose_env}
    done = subprocess.run([tool, "-f", str(COMPOSE_FILE), "config"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _ours(service: dict) -> bool:
    return "build" in service


def test_committed_nats_config_is_a_fresh_render() -> None:
    assert NATS_CONF.read_text() == render_compose_config(), (
        "compose/nats/nats-server.conf is stale: run `rollout secure compose-config`")


def test_compose_refuses_to_start_without_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RO_", "GRAFANA_"))}
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode != 0
    assert "rollout secure compose-env" in done.stderr


def test_every_service_command_is_a_real_rollout_subcommand(compose_config: dict) -> None:
    parser = build_parser()
    ours = {name: s for name, s in compose_config["services"].items() if _ours(s)}
    assert {"ticks", "api", "traffic", "operator"} <= set(ours)
    consumers = set()
    for name, service in ours.items():
        argv = service["command"]
        assert isinstance(argv, list), f"{name}: command must be an exec-form list"
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"service {name}: `rollout {' '.join(argv)}` is not a valid rollout command")
        assert callable(args.handler), name
        if argv[0] == "consumer":
            consumers.add(args.name)
    # Every registered consumer runs as its own service, and only those.
    assert consumers == set(registry.names())


def test_every_mounted_file_exists(compose_config: dict) -> None:
    mounts = 0
    for name, service in compose_config["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            kind = volume.get("type") if isinstance(volume, dict) else ("bind" if source.startswith("/") else "volume")
            if kind == "bind":
                assert Path(source).exists(), f"{name}: mounted {source} does not exist"
                assert str(Path(source)).startswith(str(COMPOSE)), f"{name}: mounts {source} outside compose/"
                mounts += 1
            else:
                assert source in compose_config["volumes"], f"{name}: volume {source} is not a named volume"
    assert mounts >= 4
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "USER rollout" in dockerfile


def test_operator_examples_name_the_actor() -> None:
    """The operator container has no $USER: a change without --actor is refused there."""
    examples = [line for path in (COMPOSE_FILE, ROOT / "docs" / "compose.md") for line in path.read_text().splitlines()
                if "run --rm operator" in line and any(f" operator {verb} " in line for verb in ("set", "kill", "resume"))]
    assert examples and all("--actor" in line for line in examples), examples


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    import fnmatch

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").removeprefix("**/")
        if any(fnmatch.fnmatch(c, bare) or fnmatch.fnmatch(c.rsplit("/", 1)[-1], bare) for c in candidates):
            ignored = not negate
    return ignored


def test_the_build_context_is_what_the_image_needs_whatever_the_builder() -> None:
    """One root .dockerignore (every builder reads it; Dockerfile.dockerignore is BuildKit's only)."""
    assert not (COMPOSE / "Dockerfile.dockerignore").exists(), "BuildKit would prefer it to the root file"
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", "tests/conftest.py", "data/nats.url", "docs/compose.md", "compose/.env",
                 "engine/__pycache__/x.pyc"):
        assert _ignored(path, patterns), f"{path} would be sent as build context"
    copied = [source for line in (COMPOSE / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY") and "--from" not in line for source in line.split()[1:-1]]
    assert copied and not [s for s in copied if _ignored(s, patterns)], "the Dockerfile copies what is ignored"


def test_stack_policies_healthchecks_restarts_and_loopback_ports(compose_config: dict) -> None:
    services = compose_config["services"]
    for name, service in services.items():
        tools = "tools" in service.get("profiles", [])
        if not tools:
            assert service.get("restart") == "unless-stopped", f"{name}: restart policy"
            check = service.get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), f"{name}: healthcheck"
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: publishes {port} beyond loopback"
        if _ours(service):
            assert service["networks"] == {"backend": None} or list(service["networks"]) == ["backend"]
            env = service["environment"]
            assert env["ROLLOUT_SECURE"] == "true" and env["ROLLOUT_USER"] in ROLES, name
        check_cmd = service.get("healthcheck", {}).get("test") or []
        if check_cmd[1:2] == ["rollout"]:
            build_parser().parse_args(check_cmd[2:])  # a real subcommand, or SystemExit fails the test
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nats", "grafana"}
    assert compose_config["networks"]["backend"].get("internal") is True
    # NATS gets its config read-only and every password from the environment.
    nats_env = services["nats"]["environment"]
    assert set(nats_env) == {env_reference(role) for role in ROLES}


def test_prometheus_scrapes_every_metrics_service_and_the_dashboard_uses_real_metrics(compose_config: dict) -> None:
    scrape = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    targets = {t.split(":")[0] for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    serving = {name for name, s in compose_config["services"].items()
               if "--metrics-port" in s.get("command", []) or s.get("environment", {}).get("ROLLOUT_METRICS_PORT")}
    assert targets == serving
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "rollout-engine.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("baseline vs candidate", "breaches", "kill switches", "consumer lag", "dead letters",
                  "bandit arm shares", "pending re-checks"):
        assert topic in titles, f"dashboard lacks a {topic} panel"
    source = "\n".join(p.read_text() for d in ("engine", "consumers") for p in (ROOT / d).rglob("*.py"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {re.sub(r"_(total|bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"rollout_[a-z0-9_]+", e)}
    missing = sorted(n for n in names if f'"{n}"' not in source and f'"{n}_total"' not in source)
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"
    unitless = [p["title"] for p in dashboard["panels"] if any("_seconds" in t["expr"] for t in p["targets"])
                and p.get("fieldConfig", {}).get("defaults", {}).get("unit") != "s"]
    assert not unitless, f"panels plotting seconds without the unit: {unitless}"


def test_make_test_installs_docker_compose() -> None:
    """CI runs `make test`, whose `tools` step installs docker-compose when it is missing."""
    ci = (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make test" in ci
    assert "test: $(STAMP) tools" in makefile
    assert "apt-get install -y -qq" in makefile and "$(APT_INSTALL) docker-compose" in makefile


def _runnable_copy(tmp_path: Path) -> Path:
    """The committed config with only the container paths and ports swapped for local ones."""
    text = NATS_CONF.read_text()
    swaps = {
        'listen: "0.0.0.0:4222"': 'listen: "127.0.0.1:-1"',
        'http: "127.0.0.1:8222"': 'http: "127.0.0.1:-1"',
        'store_dir: "/data/jetstream"': f"store_dir: {json.dumps(str(tmp_path / 'js'))}",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"{old!r} not in the compose NATS config"
        text = text.replace(old, new)
    path = tmp_path / "nats-server.conf"
    path.write_text(text + f"ports_file_dir: {json.dumps(str(tmp_path))}\n")
    return path


async def test_compose_nats_config_loads_and_enforces_permissions(tmp_path: Path, compose_env: dict[str, str]) -> None:
    binary = find_nats_server()
    env = {**os.environ, **compose_env}
    checked = subprocess.run([binary, "-t", "-c", str(NATS_CONF)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    conf = _runnable_copy(tmp_path)
    process = subprocess.Popen([binary, "-c", str(conf)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        ports = tmp_path / f"{Path(binary).name}_{process.pid}.ports"
        deadline = time.monotonic() + 15
        while not ports.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the compose NATS config did not start"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        info = json.loads(ports.read_text())
        url = info["nats"][0]
        health = info["monitoring"][0] + "/healthz?js-enabled-only=true"
        assert (await asyncio.to_thread(urllib.request.urlopen, health, None, 5)).status == 200
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        async def client(role: str) -> nats.aio.client.Client:
            return await nats.connect(url, user=role, password=compose_env[env_reference(role)],
                                      inbox_prefix=inbox_prefix(role), error_cb=on_error, allow_reconnect=False)

        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        engine, producer = await client("engine"), await client("producer")
        try:
            from rollout_engine.engine.bus import provision
            from rollout_engine.engine.settings import load_settings

            ejs, pjs = engine.jetstream(), producer.jetstream()
            await provision(ejs, load_settings(env={}))
            kill = subjects.control("compose-check", "kill_switch")
            with pytest.raises(nats.errors.TimeoutError):
                await pjs.publish(kill, b"forged", timeout=0.5)
            for _ in range(500):
                if any("permissions violation" in e and kill in e for e in errors):
                    break
                await asyncio.sleep(0.02)
            assert any("permissions violation" in e and kill in e for e in errors), errors
            assert (await pjs.publish(subjects.event("compose-check", "decision"), b"e")).seq >= 1
            assert (await ejs.publish(kill, b"k")).seq >= 1
            assert (await ejs.get_last_msg(subjects.LOG_STREAM, kill)).data == b"k"
        finally:
            await producer.close()
            await engine.close()
    finally:
        process.terminate()
        process.wait(10)


async def test_rollout_ticks_provisions_and_ticks_on_an_external_server(fresh_server, tmp_path: Path) -> None:
    """The compose stack's clock against an external server: streams, then ticks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
    env.update(ROLLOUT_NATS_URL=fresh_server.url, ROLLOUT_TICK_INTERVAL_MS="50", ROLLOUT_METRICS_PORT="0")
    done = subprocess.run([sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(tmp_path), "ticks", "--provision-only"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no ticks published" in done.stdout and "a tick every" not in done.stdout
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout_engine.engine.cli", "--data-dir", str(tmp_path), "ticks", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    nc = await nats.connect(fresh_server.url)
    try:
        js = nc.jetstream()
        for _ in range(200):
            info = await js.stream_info(subjects.LOG_STREAM, subjects_filter=subjects.TICK)
            if (info.state.subjects or {}).get(subjects.TICK, 0) >= 3:
                break
            await asyncio.sleep(0.05)
        assert (info.state.subjects or {}).get(subjects.TICK, 0) >= 3
    finally:
        await nc.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


def test_secure_compose_commands_write_private_env_and_check_freshness(tmp_path: Path) -> None:
    rollout = [sys.executable, "-m", "rollout_engine.engine.cli", "secure"]
    env_file = tmp_path / ".env"
    done = subprocess.run([*rollout, "compose-env", "--out", str(env_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert env_file.stat().st_mode & 0o777 == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert set(values) == {env_reference(role) for role in ROLES} | {"GRAFANA_ADMIN_PASSWORD"}
    again = subprocess.run([*rollout, "compose-env", "--out", str(env_file)], capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr
    conf = tmp_path / "nats.conf"
    subprocess.run([*rollout, "compose-config", "--out", str(conf)], check=True, capture_output=True)
    assert subprocess.run([*rollout, "compose-config", "--out", str(conf), "--check"], capture_output=True).returncode == 0
    conf.write_text(conf.read_text().replace("ro.evt.*.*", "ro.>"))
    stale = subprocess.run([*rollout, "compose-config", "--out", str(conf), "--check"], capture_output=True, text=True)
    assert stale.returncode == 2 and "stale" in stale.stderr
