"""The one place settings, profiles and the environment are read.

Settings are loaded in this order, later sources winning::

    defaults < the profile's settings.json < environment < command line

Environment variables are ``SOFTPHONE_<FIELD>`` for every field, plus the
ecosystem's usual names: ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``, ``ASSEMBLYAI_API_KEY``, ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL``. Secrets may also come from the OS keychain (service
``softphone``, user ``<profile>/<field>``), ranking with the settings file.
Each profile has its own directory (settings, history database, recordings,
logs) under ``SOFTPHONE_HOME`` (default
``$XDG_DATA_HOME/softphone``), so several instances run side by side.

Secrets are held in :class:`Secret`, whose ``str`` and ``repr`` are redacted,
and are never written to the settings file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import idna

from softphone.errors import ConfigError

Role = Literal["caller", "agent", "supervisor"]
SttProvider = Literal["local", "assemblyai", "openai"]
SummarizerProvider = Literal["offline", "openai"]
Theme = Literal["light", "dark"]

# More replicas than this in ``backend_url`` is a mistake (each is tried in turn).
MAX_BACKEND_URLS = 8
PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SETTINGS_FILE = "settings.json"


class Secret:
    """A secret value whose text never shows in logs, reprs or exceptions.

    Args:
        value: The secret itself; read it back with :meth:`get`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret's text, for the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _field(default: Any, help: str, *, env: tuple[str, ...] = (), **kw: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "env": env, **kw})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of one softphone instance, typed and documented.

    Build it with :func:`load_settings`; fields are read-only so that the
    services built from it agree on one configuration.
    """

    profile: str = _field("default", "profile name: own settings, history, recordings and logs")
    home: Path = _field(Path(), "base directory holding every profile (empty: XDG data dir)")
    role: Role = _field("agent", "role this instance plays: caller, agent or supervisor")
    identity: str = _field("", "participant identity (empty: derived from role and profile)")
    display_name: str = _field("", "name shown to other participants")
    room: str = _field("", "call room to join at start (a call this identity is a party of)")
    call_agent: str = _field(
        "agent-a", "the agent a caller's call goes to (until calls are queued)"
    )
    lobby_room: str = _field("lobby", "room where online agents wait; it is the agent directory")

    livekit_url: str = _field(
        "", "LiveKit server URL (empty: start a local server)", env=("LIVEKIT_URL",)
    )
    livekit_api_key: str = _field("", "LiveKit API key", env=("LIVEKIT_API_KEY",))
    livekit_api_secret: Secret | None = _field(
        None, "LiveKit API secret", env=("LIVEKIT_API_SECRET",), secret=True
    )
    livekit_server_bin: str = _field("", "path to a livekit-server binary to use")
    token_ttl_s: int = _field(600, "lifetime of minted access tokens, seconds", min=10, max=86400)

    backend_url: str = _field(
        "",
        "softphone backend URL, or the URLs of its replicas separated by commas, tried in"
        " turn (empty: embedded services)",
    )
    backend_api_key: Secret | None = _field(None, "API key for the backend", secret=True)
    command_signing_key: Secret | None = _field(
        None,
        "service only: Ed25519 seed (base64url, 32 bytes) that signs commands to the apps"
        " (empty: a new key per start)",
        secret=True,
    )
    backend_keys_file: Path = _field(
        Path(), "backend only: JSON file mapping API keys to identity and role"
    )
    redis_url: Secret | None = _field(
        None,
        "service only: Redis holding the live state every replica shares"
        " (empty: a private Redis for this one replica)",
        env=("REDIS_URL",),
        secret=True,
    )
    redis_prefix: str = _field("softphone:", "service only: prefix of this deployment's Redis keys")
    database_url: Secret | None = _field(
        None,
        "service only: PostgreSQL holding the records every replica writes"
        " (empty: the profile's SQLite history, for one replica)",
        env=("DATABASE_URL",),
        secret=True,
    )
    lease_ttl_s: float = _field(
        10.0,
        "service only: seconds a stalled replica keeps its transfers before another takes"
        " over (one whose process died is replaced within half a second)",
        min=0.5,
    )
    livekit_webhooks: bool = _field(
        False,
        "service only: LiveKit sends its webhooks to /v1/livekit/webhook (rooms are then"
        " polled only as a safety net)",
    )
    move_timeout_s: float = _field(8.0, "seconds a caller's app may take to move rooms", min=1)

    offer_timeout_s: float = _field(30.0, "seconds a transfer offer rings before no-answer", min=1)
    summary_timeout_s: float = _field(10.0, "seconds the summarizer may take", min=0.1)

    stt_provider: SttProvider = _field("local", "batch speech-to-text: local, assemblyai, openai")
    stt_model: str = _field(
        "auto",
        "speech model: tiny.en or base (both bundled), auto (base on 4+ cores, else"
        " tiny.en), another faster-whisper name, or a path",
    )
    stt_device: str = _field("cpu", "faster-whisper device (cpu, cuda, auto)")
    stt_compute_type: str = _field("int8", "faster-whisper compute type")
    live_transcript: bool = _field(True, "transcribe calls live")
    speech_max_upload_mb: int = _field(
        50, "largest audio upload the speech route accepts, MB", min=1, max=2048
    )
    speech_max_duration_s: float = _field(
        3600.0, "longest audio the speech route accepts, seconds", min=1
    )
    assemblyai_api_key: Secret | None = _field(
        None, "AssemblyAI API key", env=("ASSEMBLYAI_API_KEY",), secret=True
    )
    assemblyai_base_url: str = _field("https://api.assemblyai.com", "AssemblyAI API base URL")
    openai_api_key: Secret | None = _field(
        None, "OpenAI-compatible API key", env=("OPENAI_API_KEY",), secret=True
    )
    openai_base_url: str = _field(
        "", "OpenAI-compatible base URL (empty: the provider's default)", env=("OPENAI_BASE_URL",)
    )
    openai_stt_model: str = _field("whisper-1", "model for audio.transcriptions")
    summarizer: SummarizerProvider = _field("offline", "summarizer: offline or openai")
    summarizer_model: str = _field("gpt-4o-mini", "chat model for the openai summarizer")

    recordings_dir: Path = _field(Path(), "where call recordings go (empty: profile/recordings)")
    input_device: str = _field("", "microphone device name (empty: system default)")
    output_device: str = _field("", "speaker/headset device name (empty: system default)")
    echo_cancellation: bool = _field(True, "remove the speaker's echo from the microphone")
    noise_suppression: bool = _field(True, "remove steady background noise from the microphone")
    high_pass: bool = _field(True, "remove rumble below speech from the microphone")
    auto_gain: bool = _field(True, "keep the microphone's voice at a steady level")
    theme: Theme = _field("light", "UI theme: light or dark")
    log_level: str = _field("INFO", "log level: DEBUG, INFO, WARNING, ERROR")
    speech_glossary: str = _field(
        "",
        "company and product names the speech recogniser should expect, separated by commas"
        " (at most 40 names of at most 48 characters, 600 characters in all)",
    )

    def __post_init__(self) -> None:
        # Checked here, not in _validate, so that every way of building
        # Settings (file, environment, command line, dataclasses.replace) is.
        text = self.speech_glossary
        if len(text) > 600:
            raise ConfigError("speech_glossary: at most 600 characters")
        if any(not c.isprintable() for c in text):
            raise ConfigError("speech_glossary: no control characters or line breaks")
        terms = self.speech_glossary_terms
        if len(terms) > 40:
            raise ConfigError("speech_glossary: at most 40 names, separated by commas")
        if any(len(t) > 48 for t in terms):
            raise ConfigError("speech_glossary: each name at most 48 characters")

    @property
    def speech_glossary_terms(self) -> tuple[str, ...]:
        """The glossary's names, blanks around each dropped, empty entries skipped."""
        return tuple(t.strip() for t in self.speech_glossary.split(",") if t.strip())

    @property
    def profile_dir(self) -> Path:
        """The profile's own directory (settings, history, recordings, logs)."""
        return self.home / "profiles" / self.profile

    @property
    def history_path(self) -> Path:
        """The profile's SQLite history database."""
        return self.profile_dir / "history.sqlite3"

    @property
    def logs_dir(self) -> Path:
        """The profile's log directory."""
        return self.profile_dir / "logs"

    @property
    def recordings_path(self) -> Path:
        """Where this profile's recordings are written."""
        return (
            self.recordings_dir
            if str(self.recordings_dir) not in ("", ".")
            else (self.profile_dir / "recordings")
        )

    @property
    def effective_identity(self) -> str:
        """The identity to join as: the setting, or ``<role>-<profile>``."""
        return self.identity or f"{self.role}-{self.profile}"

    @property
    def backend_urls(self) -> tuple[str, ...]:
        """The backend's URLs in the order they are tried (empty: embedded services)."""
        return parse_backend_urls(self.backend_url)

    @property
    def embedded_server(self) -> bool:
        """True when no LiveKit URL is configured and a local server is started."""
        return not self.livekit_url

    def ensure_dirs(self) -> None:
        """Create the profile's directories, readable by the user only (0700).

        They hold personal data (history, recordings, logs). ``mkdir``'s mode
        is cut by the umask and an existing directory keeps its mode, so the
        mode is set again each time.
        """
        for d in (self.profile_dir, self.logs_dir, self.recordings_path):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def cache_home(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache of what the app can rebuild: ``$XDG_CACHE_HOME/softphone``."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "softphone"


def default_home(env: Mapping[str, str]) -> Path:
    """Where profiles live when ``home`` is not set."""
    if env.get("SOFTPHONE_HOME"):
        return Path(env["SOFTPHONE_HOME"]).expanduser()
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "softphone"


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a raw value from a file, the environment or the CLI into the field's type."""
    hint = _HINTS[name]
    meta = FIELDS[name].metadata
    where = f"{name} (from {source})"
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Secret | None
        if raw is None or raw == "":
            return None
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected text")
        return Secret(raw)
    if origin is Literal:
        choices = get_args(hint)
        if raw not in choices:
            raise ConfigError(f"{where}: must be one of {', '.join(choices)}, not {raw!r}")
        return raw
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value: Any = int(raw)
        elif hint is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
        elif hint is Path:
            value = Path(str(raw)).expanduser()
        else:
            if not isinstance(raw, str):
                raise ValueError(raw)
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {raw!r}") from None
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where}: must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: must be at most {meta['max']}")
    return value


def parse_backend_urls(text: str) -> tuple[str, ...]:
    """The URLs in a ``backend_url`` setting: one, or several replicas' separated by commas.

    Each must be ``http(s)://host[:port][/path]``. Credentials in a URL are
    refused (they would end up in logs and settings files; the key goes in
    ``backend_api_key``), and so are a query or a fragment (the client adds
    the API's paths to the URL). Messages name an entry by its position,
    never by its text, which could hold a password.

    Args:
        text: The setting's text; blanks around each URL are dropped.

    Returns:
        The URLs in order (empty for empty text: embedded services).

    Raises:
        ConfigError: An entry is empty or not such a URL, a URL appears
            twice, or there are more than :data:`MAX_BACKEND_URLS`.
    """
    if not text.strip():
        return ()
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) > MAX_BACKEND_URLS:
        raise ConfigError(
            f"backend_url: at most {MAX_BACKEND_URLS} URLs (one per backend replica),"
            f" not {len(entries)}"
        )
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = "backend_url" if len(entries) == 1 else f"backend_url (URL {n} of {len(entries)})"
        key = _check_backend_url(entry, where)
        if key in seen:
            raise ConfigError(f"{where}: the same URL is listed twice")
        seen.add(key)
    return tuple(entries)


def _check_backend_url(url: str, where: str) -> str:
    """Raise ConfigError unless ``url`` is ``http(s)://host[:port][/path]``.

    Returns:
        The URL as compared with the others (scheme and host in lower case,
        no trailing slash).
    """
    if not url:
        raise ConfigError(f"{where}: empty; separate URLs with single commas")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 address
        raise ConfigError(f"{where}: expected an http:// or https:// URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: expected an http:// or https:// URL")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{where}: a URL holds no blanks or control characters")
    if "@" in parts.netloc:
        raise ConfigError(
            f"{where}: no user name or password in the URL;"
            " give the API key in SOFTPHONE_BACKEND_API_KEY or the keychain"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"{where}: expected http(s)://host[:port][/path], with no ? or #")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: the port must be a number from 1 to 65535") from None
    if port == 0 or parts.netloc.endswith(":"):
        raise ConfigError(f"{where}: the port must be a number from 1 to 65535")
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            idna.encode(host, uts46=True)
        except UnicodeError:  # idna.IDNAError and its kinds
            raise ConfigError(f"{where}: the host is not a valid host name") from None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _validate(values: dict[str, Any]) -> None:
    if not PROFILE_RE.match(values["profile"]):
        raise ConfigError(
            "profile: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    for key in ("livekit_url",):
        url = values[key]
        if url and not re.match(r"^(wss?|https?)://[^\s/]+", url):
            raise ConfigError(f"{key}: expected a ws://, wss://, http:// or https:// URL")
    values["backend_url"] = ",".join(parse_backend_urls(values["backend_url"]))
    for key in ("assemblyai_base_url", "openai_base_url"):
        url = values[key]
        if url and not re.match(r"^https?://[^\s/]+", url):
            raise ConfigError(f"{key}: expected an http:// or https:// URL")
    has_keys = values["livekit_api_key"] and values["livekit_api_secret"]
    if values["livekit_url"] and not has_keys and not values["backend_url"]:
        raise ConfigError(
            "livekit_url is set but LIVEKIT_API_KEY / LIVEKIT_API_SECRET are not: "
            "set both, or use a backend (--backend URL)"
        )
    level = values["log_level"].upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level: must be DEBUG, INFO, WARNING or ERROR")
    values["log_level"] = level


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, f in FIELDS.items():
        for var in (*f.metadata["env"], f"SOFTPHONE_{name.upper()}"):
            if env.get(var):
                out[name] = env[var]
    return out


def read_settings_file(path: Path) -> dict[str, Any]:
    """Read a profile's settings file; a missing file is an empty one.

    Raises:
        ConfigError: The file is not a JSON object, names an unknown setting,
            or holds a secret (secrets belong in the environment or keychain).
    """
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings")
    for key in data:
        if key not in FIELDS or key in ("profile", "home"):
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if FIELDS[key].metadata.get("secret"):
            raise ConfigError(
                f"{path}: {key} is a secret and is not read from files; "
                "set it in the environment or the keychain"
            )
    return data


KEYCHAIN_SERVICE = "softphone"


def keychain_secret(profile: str, name: str) -> Secret | None:
    """The secret ``name`` of ``profile`` in the OS keychain (``None``: none or no keychain)."""
    try:
        import keyring

        value = keyring.get_password(KEYCHAIN_SERVICE, f"{profile}/{name}")
    except Exception:  # no keychain backend, locked keychain, ...
        return None
    return Secret(value) if value else None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load the settings of one profile from every source, in order.

    Args:
        overrides: Values from the command line (or a test), highest priority.
            ``None`` values are ignored.
        env: The environment to read; defaults to ``os.environ``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: A value is invalid; the message names it and its source.
    """
    env = os.environ if env is None else env
    cli = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in cli:
        if key not in FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
    env_vals = _env_values(env)
    profile = _coerce("profile", cli.get("profile", env_vals.get("profile", "default")), "profile")
    home_raw = cli.get("home") or env.get("SOFTPHONE_HOME") or ""
    home = Path(str(home_raw)).expanduser() if home_raw else default_home(env)

    values: dict[str, Any] = {f.name: f.default for f in FIELDS.values()}
    values.update(profile=profile, home=home)
    if not PROFILE_RE.match(profile):
        _validate(values)
    file_path = home / "profiles" / profile / SETTINGS_FILE
    for source, layer in (
        (str(file_path), read_settings_file(file_path)),
        ("environment", env_vals),
        ("command line", cli),
    ):
        for key, raw in layer.items():
            if key in ("profile", "home"):
                continue
            values[key] = _coerce(key, raw, source)
    for key, f in FIELDS.items():  # the keychain ranks with the file: below env and CLI
        if f.metadata.get("secret") and values[key] is None:
            values[key] = keychain_secret(profile, key)
    _validate(values)
    return Settings(**values)


def save_settings(settings: Settings, changes: Mapping[str, Any]) -> Settings:
    """Validate ``changes``, write them to the profile's file, and return new settings.

    Secrets are refused here: they go to the environment or the OS keychain.

    Raises:
        ConfigError: A value is invalid or is a secret.
    """
    path = settings.profile_dir / SETTINGS_FILE
    current = read_settings_file(path)
    for key, raw in changes.items():
        if key not in FIELDS or key in ("profile", "home"):
            raise ConfigError(f"unknown setting {key!r}")
        if FIELDS[key].metadata.get("secret"):
            raise ConfigError(f"{key} is a secret and is never written to the settings file")
        value = _coerce(key, raw, "settings")
        current[key] = str(value) if isinstance(value, Path) else value
    values = dataclasses.asdict(settings)
    values.update({k: _coerce(k, v, "settings") for k, v in current.items()})
    for key in FIELDS:
        if FIELDS[key].metadata.get("secret"):
            values[key] = getattr(settings, key)
    _validate(values)
    new = Settings(**values)  # its own checks too, before anything is written
    settings.profile_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a .tmp left over by a crash keeps its old mode otherwise
    with open(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return new
