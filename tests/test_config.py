"""Settings: sources in order, validation with clear messages, secrets kept secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softphone.config import Secret, load_settings, save_settings
from softphone.errors import ConfigError

pytestmark = pytest.mark.unit


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {"SOFTPHONE_HOME": str(home), **extra}


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    s = load_settings(env=_env(tmp_path))
    assert s.profile == "default" and s.role == "agent"
    assert s.embedded_server and s.livekit_url == ""
    assert s.profile_dir == tmp_path / "profiles" / "default"
    assert s.history_path.parent == s.profile_dir
    assert s.recordings_path == s.profile_dir / "recordings"
    assert s.effective_identity == "agent-default"


def test_sources_apply_in_order(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles" / "alice"
    pdir.mkdir(parents=True)
    (pdir / "settings.json").write_text(
        json.dumps({"offer_timeout_s": 12, "role": "caller", "theme": "dark"})
    )
    env = _env(
        tmp_path,
        SOFTPHONE_PROFILE="alice",
        SOFTPHONE_ROLE="supervisor",
        LIVEKIT_URL="wss://lk.example.test",
        LIVEKIT_API_KEY="k",
        LIVEKIT_API_SECRET="s3cr3t",
    )
    s = load_settings({"role": "agent"}, env=env)
    assert s.profile == "alice"
    assert s.offer_timeout_s == 12.0  # file over default
    assert s.theme == "dark"
    assert s.role == "agent"  # command line over environment over file
    assert s.livekit_url == "wss://lk.example.test" and not s.embedded_server
    assert isinstance(s.livekit_api_secret, Secret) and s.livekit_api_secret.get() == "s3cr3t"


def test_secrets_never_show(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        OPENAI_API_KEY="sk-verysecretvalue",
        LIVEKIT_URL="ws://x:1",
        LIVEKIT_API_KEY="k",
        LIVEKIT_API_SECRET="topsecret",
    )
    s = load_settings(env=env)
    text = repr(s) + str(s)
    assert "sk-verysecretvalue" not in text and "topsecret" not in text
    with pytest.raises(ConfigError) as info:
        save_settings(s, {"openai_api_key": "sk-other"})
    assert "secret" in info.value.message and "sk-other" not in info.value.message


def test_secrets_in_the_settings_file_are_refused(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles" / "default"
    pdir.mkdir(parents=True)
    (pdir / "settings.json").write_text(json.dumps({"livekit_api_secret": "leaked"}))
    with pytest.raises(ConfigError) as info:
        load_settings(env=_env(tmp_path))
    assert "livekit_api_secret" in info.value.message and "leaked" not in info.value.message


@pytest.mark.parametrize(
    ("overrides", "env_extra", "needle"),
    [
        (
            {"role": "boss"},
            {},
            "role (from command line): must be one of caller, agent, supervisor",
        ),
        (
            {},
            {"SOFTPHONE_OFFER_TIMEOUT_S": "soon"},
            "offer_timeout_s (from environment): expected float",
        ),
        (
            {},
            {"SOFTPHONE_OFFER_TIMEOUT_S": "0"},
            "offer_timeout_s (from environment): must be at least 1",
        ),
        ({"profile": "../etc"}, {}, "profile: use 1-64 letters"),
        ({"livekit_url": "ftp://x"}, {}, "livekit_url: expected a ws://"),
        ({"livekit_url": "wss://lk.test"}, {}, "LIVEKIT_API_KEY / LIVEKIT_API_SECRET"),
        ({"backend_url": "not a url"}, {}, "backend_url: expected an http"),
        ({"log_level": "loud"}, {}, "log_level"),
        ({"colour": "red"}, {}, "unknown setting 'colour'"),
        (
            {},
            {"SOFTPHONE_LIVE_TRANSCRIPT": "maybe"},
            "live_transcript (from environment): expected bool",
        ),
    ],
)
def test_bad_values_name_the_setting_and_its_source(
    tmp_path: Path, overrides: dict, env_extra: dict, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides, env=_env(tmp_path, **env_extra))
    assert needle in info.value.message


def test_a_broken_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles" / "default"
    pdir.mkdir(parents=True)
    (pdir / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        load_settings(env=_env(tmp_path))
    assert "settings.json" in info.value.message


def test_settings_round_trip_per_profile(tmp_path: Path) -> None:
    a = load_settings({"profile": "a"}, env=_env(tmp_path))
    b = load_settings({"profile": "b"}, env=_env(tmp_path))
    a2 = save_settings(a, {"offer_timeout_s": 45, "input_device": "Headset", "theme": "dark"})
    assert a2.offer_timeout_s == 45.0 and a2.input_device == "Headset"
    reloaded = load_settings({"profile": "a"}, env=_env(tmp_path))
    assert (reloaded.offer_timeout_s, reloaded.input_device, reloaded.theme) == (
        45.0,
        "Headset",
        "dark",
    )
    other = load_settings({"profile": "b"}, env=_env(tmp_path))
    assert other.offer_timeout_s == b.offer_timeout_s == 30.0 and other.input_device == ""
    with pytest.raises(ConfigError):
        save_settings(a2, {"offer_timeout_s": -1})
    assert load_settings({"profile": "a"}, env=_env(tmp_path)).offer_timeout_s == 45.0
