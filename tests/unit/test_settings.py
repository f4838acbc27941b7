"""Settings precedence (defaults < TOML < environment < flags) and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from rollout_engine.engine.settings import SETTINGS_DOC, Settings, SettingsError, load_settings


def test_defaults_then_file_then_environment_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "rollout.toml"
    file.write_text('tick_interval_ms = 500\nreplicas = 3\ndata_dir = "from-file"\n')
    assert load_settings(env={}).tick_interval_ms == 250
    s = load_settings(file, env={"ROLLOUT_REPLICAS": "1", "ROLLOUT_SECURE": "yes"}, data_dir="flag")
    assert (s.tick_interval_ms, s.replicas, s.secure, s.data_dir) == (500, 1, True, "flag")


def test_engine_table_is_accepted(tmp_path: Path) -> None:
    file = tmp_path / "rollout.toml"
    file.write_text("[engine]\nconsumer_batch = 64\n")
    assert load_settings(file, env={}).consumer_batch == 64


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROLLOUT_REPLICAS": "9"}, "replicas"),
        ({"ROLLOUT_TICK_INTERVAL_MS": "fast"}, "tick_interval_ms"),
        ({"ROLLOUT_SECURE": "maybe"}, "ROLLOUT_SECURE"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "rollout.toml"
    file.write_text("tick_interval = 5\n")
    with pytest.raises(SettingsError, match="tick_interval"):
        load_settings(file, env={})


def test_missing_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("= broken")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, env={})


def test_every_setting_is_documented() -> None:
    import msgspec

    assert {f.name for f in msgspec.structs.fields(Settings)} == set(SETTINGS_DOC)


def test_configuration_reference_lists_every_setting_with_its_default() -> None:
    import msgspec

    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    defaults = Settings()
    for field in msgspec.structs.fields(Settings):
        assert f"| `{field.name}` | `ROLLOUT_{field.name.upper()}` |" in text, field.name
        assert f"`{getattr(defaults, field.name)!r}`" in text, field.name



def test_webhooks_from_the_environment_and_their_checks() -> None:
    from rollout_engine.engine.settings import WEBHOOK_DOC, Webhook

    settings = load_settings(env={"ROLLOUT_WEBHOOKS": '[{"name": "chat", "url": "https://hooks.example/x", '
                                                       '"format": "slack", "events": ["kill_switch"]}]'})
    assert settings.webhooks == [Webhook(name="chat", url="https://hooks.example/x", format="slack",
                                         events=["kill_switch"])]
    assert {f.name for f in msgspec.structs.fields(Webhook)} == set(WEBHOOK_DOC)
    bad = {
        "not json": "expected a JSON list",
        '[{"name": "a b", "url": "https://x"}]': "webhooks[0].name",
        '[{"name": "a", "url": "ftp://x"}]': "webhooks[0].url",
        '[{"name": "a", "url": "https://x", "format": "teams"}]': "webhooks[0].format",
        '[{"name": "a", "url": "https://x"}, {"name": "a", "url": "https://y"}]': "names must be unique",
    }
    for raw, expected in bad.items():
        with pytest.raises(SettingsError, match=re.escape(expected)):
            load_settings(env={"ROLLOUT_WEBHOOKS": raw})
    with pytest.raises(SettingsError, match="must stay under"):
        load_settings(env={"ROLLOUT_NOTIFY_MAX_ATTEMPTS": "100", "ROLLOUT_NOTIFY_BACKOFF_MAX_S": "3600"})
