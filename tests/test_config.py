"""Settings: sources in order, validation with clear messages, secrets kept secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softphone.config import MAX_BACKEND_URLS, Secret, load_settings, save_settings
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


# ---- backend_url: one backend, or the replicas of one ----------------------------------
def test_backend_url_takes_a_list_of_replicas(tmp_path: Path) -> None:
    s = load_settings(
        {"backend_url": " http://10.0.0.5:8000 , https://backend-2.example.test/softphone/ "},
        env=_env(tmp_path),
    )
    assert s.backend_urls == ("http://10.0.0.5:8000", "https://backend-2.example.test/softphone/")
    assert s.backend_url == "http://10.0.0.5:8000,https://backend-2.example.test/softphone/"
    # From the environment too, and at most MAX_BACKEND_URLS of them.
    many = ",".join(f"http://[::1]:{8000 + n}" for n in range(MAX_BACKEND_URLS))
    s = load_settings(env=_env(tmp_path, SOFTPHONE_BACKEND_URL=many))
    assert len(s.backend_urls) == MAX_BACKEND_URLS == 8
    assert s.backend_urls[0] == "http://[::1]:8000"


def test_a_single_backend_url_is_kept_as_it_was(tmp_path: Path) -> None:
    s = load_settings({"backend_url": "https://backend.example.test:8443/"}, env=_env(tmp_path))
    assert s.backend_url == "https://backend.example.test:8443/"
    assert s.backend_urls == ("https://backend.example.test:8443/",)
    assert load_settings(env=_env(tmp_path)).backend_urls == ()
    # Saved and read back from the profile's file unchanged.
    saved = save_settings(s, {"backend_url": "http://127.0.0.1:8000"})
    assert saved.backend_urls == ("http://127.0.0.1:8000",)
    assert load_settings({"profile": "default"}, env=_env(tmp_path)).backend_url == (
        "http://127.0.0.1:8000"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("http://a.test,ftp://b.test", "backend_url (URL 2 of 2): expected an http"),
        ("http://a.test,,http://b.test", "backend_url (URL 2 of 3): empty"),
        ("http://a.test,", "backend_url (URL 2 of 2): empty"),
        ("http://a.test/?debug=1", "backend_url: expected http(s)://host[:port][/path]"),
        ("http://a.test/#x", "with no ? or #"),
        ("http://a.test:99999", "the port must be a number from 1 to 65535"),
        ("http://a.test:0", "the port must be a number"),
        ("http://a.test:", "the port must be a number"),
        ("http://bad_host.test", "the host is not a valid host name"),
        ("http://-bad.test", "the host is not a valid host name"),
        ("http://[::1", "expected an http"),
        ("http://a.test/x y", "no blanks or control characters"),
        ("http://a.test/\x00", "no blanks or control characters"),
        ("https:///path-only", "expected an http"),
        ("http://a.test/, HTTP://A.TEST", "backend_url (URL 2 of 2): the same URL is listed twice"),
    ],
)
def test_a_bad_backend_url_entry_is_a_clear_error(tmp_path: Path, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"backend_url": value}, env=_env(tmp_path))
    assert needle in info.value.message


@pytest.mark.parametrize(
    "value",
    [
        "https://agent-7:hunter2@backend.example.test",
        "http://a.test, http://hunter2@b.test:8000/sp",
        "http://:hunter2@a.test",
    ],
)
def test_credentials_in_a_backend_url_are_refused_and_never_shown(
    tmp_path: Path, value: str
) -> None:
    for overrides, env in (
        ({"backend_url": value}, _env(tmp_path)),
        ({}, _env(tmp_path, SOFTPHONE_BACKEND_URL=value)),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(overrides, env=env)
        assert "no user name or password" in info.value.message
        assert "SOFTPHONE_BACKEND_API_KEY" in info.value.message
        shown = f"{info.value.message} {info.value!s} {info.value!r} {info.value.details}"
        assert "hunter2" not in shown
    s = load_settings(env=_env(tmp_path))
    with pytest.raises(ConfigError) as info:
        save_settings(s, {"backend_url": value})
    assert "hunter2" not in info.value.message
    assert not (s.profile_dir / "settings.json").exists(), "nothing half-saved"


def test_too_many_backend_urls_is_a_clear_error(tmp_path: Path) -> None:
    value = ",".join(f"http://replica-{n}.example.test" for n in range(MAX_BACKEND_URLS + 1))
    with pytest.raises(ConfigError) as info:
        load_settings({"backend_url": value}, env=_env(tmp_path))
    assert info.value.message == "backend_url: at most 8 URLs (one per backend replica), not 9"
