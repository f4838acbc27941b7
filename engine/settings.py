"""Engine settings: defaults < TOML file < ``ROLLOUT_*`` environment variables.

Every setting is a field of :class:`Settings` with its type, default and meaning; the
configuration reference in ``docs/configuration.md`` is generated from the same field
docs. A bad value fails at start-up with the setting's name, where it came from, and
what was expected, never later in the middle of a rollout.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from rollout_engine.consumers.notifier import NOTIFY_WINDOW_MS

__all__ = ["SETTINGS_DOC", "WEBHOOK_DOC", "Settings", "SettingsError", "Webhook", "load_settings"]

ENV_PREFIX = "ROLLOUT_"
DEFAULT_FILE = "rollout.toml"


class SettingsError(ValueError):
    """A setting is missing, mistyped or out of range; the message says which and where."""


class Webhook(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One endpoint the notifier posts kill switches, resumes and escalations to.
    Field docs live in :data:`WEBHOOK_DOC`."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    url: Annotated[str, Meta(pattern=r"^https?://[^\s]+$", max_length=2048)]
    format: Literal["json", "slack"] = "json"
    events: list[Literal["kill_switch", "resume", "escalation"]] = msgspec.field(
        default_factory=lambda: ["kill_switch", "resume", "escalation"])
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0
    headers: dict[str, str] = msgspec.field(default_factory=dict)


WEBHOOK_DOC: dict[str, str] = {
    "name": "Token naming the webhook in the log (`Notification.target`), metrics and dead letters; unique.",
    "url": "http:// or https:// URL the JSON body is POSTed to. A Slack incoming-webhook URL is a secret: set it through ROLLOUT_WEBHOOKS in the environment, not a committed file.",
    "format": "`json`: the generic body (delivery id, rollout, kind, text and the whole command); `slack`: `{\"text\": ...}` for Slack-compatible incoming webhooks.",
    "events": "Which commands to post: any of kill_switch, resume, escalation (armed escalations only).",
    "timeout_s": "Seconds one POST may take before it counts as a failed attempt.",
    "headers": "Extra HTTP headers, e.g. an Authorization token for a generic receiver.",
}


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All engine settings. Field docs live in :data:`SETTINGS_DOC`."""

    nats_url: str = ""
    data_dir: str = "data"
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=-1, le=65535)] = 4222
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    max_payload_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 8 * 1024 * 1024
    log_max_age_s: Annotated[float, Meta(ge=0)] = 7 * 24 * 3600.0
    log_max_bytes: Annotated[int, Meta(ge=-1)] = -1
    dedupe_window_s: Annotated[float, Meta(gt=0, le=24 * 3600)] = 300.0
    tick_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 250
    consumer_batch: Annotated[int, Meta(ge=1, le=10_000)] = 256
    resident_rollouts: Annotated[int, Meta(ge=0, le=10_000_000)] = 10_000
    consumer_max_deliver: Annotated[int, Meta(ge=1)] = 5
    ack_wait_s: Annotated[float, Meta(gt=0)] = 30.0
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    connect_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    secure: bool = False
    creds_file: str = ""
    user: str = ""
    password: str = ""
    password_file: str = ""
    msg_id_key_file: str = ""
    partitions: Annotated[int, Meta(ge=0, le=1024)] = 0
    gate_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    gate_host: str = "127.0.0.1"
    gate_token: str = ""
    gate_rate_per_s: Annotated[float, Meta(gt=0, le=10_000)] = 5.0
    gate_burst: Annotated[int, Meta(ge=1, le=10_000)] = 20
    webhooks: list[Webhook] = msgspec.field(default_factory=list)
    notify_max_attempts: Annotated[int, Meta(ge=1, le=100)] = 12
    notify_backoff_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0
    notify_backoff_max_s: Annotated[float, Meta(gt=0, le=3600)] = 300.0
    notify_max_age_s: Annotated[float, Meta(gt=0, le=6 * 3600)] = 3600.0
    ack_ttl_s: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    kill_path_nice: Annotated[int, Meta(ge=-20, le=0)] = -5

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def url_file(self) -> Path:
        """Where ``rollout up`` writes the URL of the server it started."""
        return self.data_path / "nats.url"

    def resolved_url(self) -> str:
        """The NATS URL to connect to: the setting, else the running ``rollout up``'s."""
        if self.nats_url:
            return self.nats_url
        if self.url_file.exists():
            return self.url_file.read_text().strip()
        return f"nats://{self.host}:{self.port if self.port > 0 else 4222}"


SETTINGS_DOC: dict[str, str] = {
    "nats_url": "NATS URL(s), comma-separated for a cluster. Empty: the server started by `rollout up` (its URL is in DATA_DIR/nats.url), else nats://HOST:PORT.",
    "data_dir": "Directory for the embedded server's JetStream store, consumer SQLite stores and reports.",
    "host": "Interface the embedded nats-server binds. Loopback by default; a non-loopback bind needs `secure = true`.",
    "port": "Client port of the embedded nats-server; 0 or -1 picks a free port.",
    "replicas": "Replica count of the streams and KV bucket: 1 embedded, 3 on a JetStream cluster.",
    "max_payload_bytes": "Server max_payload. Larger than the engine's 1 MiB event-message limit so oversized events reach the dead letters instead of failing at publish.",
    "log_max_age_s": "How long the log stream keeps events (seconds; 0 keeps them forever).",
    "log_max_bytes": "Size cap of the log stream in bytes (-1: none). The oldest events go first.",
    "dedupe_window_s": "JetStream duplicate window: a message id seen within it is stored once.",
    "tick_interval_ms": ("Interval of engine ticks (time as an event) on ro.tick, 10 to 60000 ms: ticks move "
                         "sustain, recovery and hold-down timers and time windows, so a kill or recovery that "
                         "waits on time alone is late by up to one interval."),
    "consumer_batch": "Messages a consumer fetches per pull request.",
    "resident_rollouts": ("Rollouts each consumer keeps in memory (0: all). Beyond it, the least recently touched "
                          "rollout with nothing due rests in the consumer's SQLite store and is loaded again "
                          "when its next event arrives; outputs do not change. 10,000 keeps canary_stats near "
                          "200 MB however many rollouts exist; see docs/scaling.md."),
    "consumer_max_deliver": "Deliveries of one message before the consumer dead-letters it.",
    "ack_wait_s": "Seconds JetStream waits for an ack before it redelivers.",
    "metrics_port": ("Port of the Prometheus /metrics endpoint (0: off) of `rollout up` (engine and consumer "
                     "metrics merged), `rollout ticks`, `rollout traffic` and `rollout consumer` (its "
                     "`--metrics-port` overrides it)."),
    "connect_timeout_s": "Seconds to wait for a NATS server before failing with a clear error.",
    "secure": "Generate per-role credentials and require them (see docs/security.md).",
    "creds_file": "NATS credentials file for this process (secure mode).",
    "user": "NATS user name for this process (secure mode).",
    "password": "NATS password for this process (secure mode).",
    "password_file": "File holding the NATS password (mode 0600, owned by this user, no symlink), used when `password` is empty: `rollout up --secure` hands its children this path instead of the password in their environment.",
    "msg_id_key_file": "Secret key of the engine's message ids (hex, mode 0600). Empty: DATA_DIR/secure/msgid.key, created on first use. Every engine process of one deployment must share it (docs/security.md).",
    "webhooks": "Endpoints the `notifier` consumer posts each kill switch, resume and armed escalation to (a list of tables, fields below); empty: it only records. In the environment, ROLLOUT_WEBHOOKS is a JSON list.",
    "notify_max_attempts": "Attempts per webhook and command before the command goes to the notifier's dead letters (ro.dlq.notifier).",
    "notify_backoff_s": "Seconds before the second attempt; each further one waits twice as long, up to notify_backoff_max_s.",
    "notify_backoff_max_s": "Longest wait between two attempts.",
    "notify_max_age_s": "A command older than this (wall clock) that a webhook was never sent is not sent to it: a notifier started on an old log, or a webhook added later, does not replay history.",
    "partitions": "Partitions of the log by rollout, fixed when the log stream is created (0: one unpartitioned log). Consumers then run per partition (`rollout consumer NAME --partitions 0,1`); see docs/scaling.md.",
    "gate_port": "Port of the deployment gate for Argo Rollouts and Flagger, served by `rollout api` (0: off); see docs/integrations.md.",
    "gate_host": "Interface the deployment gate binds. Loopback by default; a non-loopback bind needs `gate_token`.",
    "gate_token": "Bearer token the gate requires (header `Authorization: Bearer ...`, or `metadata.token` in a Flagger webhook body); empty: none, loopback only. Never put it in a URL.",
    "gate_rate_per_s": "Requests per second each gate client (by IP address) may make on average; more get 429 with Retry-After.",
    "gate_burst": "Requests a gate client may make in a burst above gate_rate_per_s.",
    "ack_ttl_s": "SDK acknowledgements: each RolloutClient reports the control revision it applied at every change and every ack_ttl_s/3 seconds; an instance silent for ack_ttl_s is stale (not counted as following), and forgotten after 10 x ack_ttl_s. 0: report nothing. See docs/sdk.md.",
    "kill_path_nice": ("Niceness the rollback consumer (the kill path) asks for when it starts, and the embedded "
                       "nats-server `rollout up` starts (every kill switch passes through it), -20 to 0. The default -5 "
                       "gives each about three times the CPU share of a default process on a busy core, so a kill "
                       "does not queue behind other work (docs/scaling.md, \"The kill path on a busy host\"). Needs "
                       "CAP_SYS_NICE (root); without it each logs a warning and keeps its niceness. In "
                       "containers give the weight to the container instead (compose `cpu_shares`, as "
                       "compose/docker-compose.yml does, or a Kubernetes CPU request) and set 0: ask for nothing. "
                       "Measured with one busy neighbour per core at 50,000 events/s: p99 24-49 ms at -5, 65-93 ms "
                       "at 0."),
}


def _coerce_env(name: str, raw: str, annotation: Any) -> Any:
    text = raw.strip()
    kind = getattr(annotation, "__origin__", annotation)
    if kind is list:
        try:
            return msgspec.json.decode(text or "[]")
        except msgspec.DecodeError as exc:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: expected a JSON list, e.g. "
                                f"'[{{\"name\": \"oncall\", \"url\": \"https://...\"}}]' ({exc})") from None
    if kind is bool or annotation == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected true or false")
    return text


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and overrides.

    ``path`` defaults to ``$ROLLOUT_CONFIG`` or ``./rollout.toml`` when it exists.
    Keyword overrides (from CLI flags) win over everything.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    file = path or env.get(f"{ENV_PREFIX}CONFIG") or (DEFAULT_FILE if Path(DEFAULT_FILE).exists() else None)
    if file:
        try:
            with open(file, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise SettingsError(f"settings file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {file} is not valid TOML: {exc}") from None
        merged.update(data.get("engine", data))
    fields = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    for name, annotation in fields.items():
        key = f"{ENV_PREFIX}{name.upper()}"
        if key in env:
            merged[name] = _coerce_env(name, env[key], annotation)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    source = f" (from {file}, the environment or flags)" if file else " (from the environment or flags)"
    try:
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}{source}; see docs/configuration.md") from None
    _check_webhooks(settings, source)
    return settings


def _check_webhooks(settings: Settings, source: str) -> None:
    names = [w.name for w in settings.webhooks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SettingsError(f"webhooks: names must be unique, repeated: {repeated}{source}")
    longest = settings.notify_max_age_s + settings.notify_max_attempts * settings.notify_backoff_max_s
    if longest * 1000 >= NOTIFY_WINDOW_MS:
        raise SettingsError(
            f"notify_max_age_s + notify_max_attempts x notify_backoff_max_s is {longest:g}s; it must stay under "
            f"{NOTIFY_WINDOW_MS // 1000}s, the time the notifier keeps a command{source}")
