"""The softphone's one exception tree.

Every failure the softphone reports is one of these. Third-party failures
(LiveKit, HTTP, SQLite, STT and LLM providers) are re-raised at the boundary as
one of ours, ``from`` the original, with ``retryable`` set. A client error
(4xx, bad input) is never retryable.

::

    SoftphoneError
    ├── ConfigError            settings, profiles, environment, command line
    ├── ValidationError        bad input at an entry point (names a field)
    ├── LocalServerError       the embedded livekit-server: missing, failed to start
    ├── LiveKitError           the LiveKit server API (rooms, participants, data, RPC)
    │   └── NotFoundError      a room or participant that does not exist
    ├── MediaError             RTC sessions: connect, publish, devices
    ├── HistoryError           the SQLite history store
    ├── SpeechError            STT engines and summarizers
    ├── TransferError          the warm-transfer protocol (illegal step, conflict)
    └── BackendError           the HTTP backend, as seen by its client

Messages never contain secrets, tokens or personal data (transcript text,
phone numbers); identities and room names go in ``details``, which log
handlers may drop.
"""

from __future__ import annotations

from typing import Any


class SoftphoneError(Exception):
    """Root of every error the softphone raises.

    Args:
        message: What went wrong and, where it helps, what to do about it.
        retryable: Whether the same call may succeed if tried again.
        details: Structured context (identities, room names); never secrets.
    """

    code = "error"

    def __init__(
        self, message: str, *, retryable: bool = False, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.details: dict[str, Any] = dict(details or {})


class ConfigError(SoftphoneError):
    """A setting is missing or invalid; the message says what to set."""

    code = "config_error"


class ValidationError(SoftphoneError):
    """Input at an entry point was rejected before anything was done.

    Args:
        field: The name of the offending field, flag or parameter.
        message: What is wrong with it.
    """

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", retryable=False, details={"field": field})
        self.field = field


class LocalServerError(SoftphoneError):
    """The embedded livekit-server could not be found, built or started."""

    code = "local_server_error"


class LiveKitError(SoftphoneError):
    """A LiveKit server API call failed."""

    code = "livekit_error"


class NotFoundError(LiveKitError):
    """The room or participant named does not exist."""

    code = "not_found"


class MediaError(SoftphoneError):
    """An RTC session could not connect, publish or play audio."""

    code = "media_error"


class HistoryError(SoftphoneError):
    """The history database could not be opened, migrated or written."""

    code = "history_error"


class SpeechError(SoftphoneError):
    """An STT engine or a summarizer failed."""

    code = "speech_error"


class TransferError(SoftphoneError):
    """A warm-transfer step was refused (illegal transition, conflict)."""

    code = "transfer_error"


class BackendError(SoftphoneError):
    """The HTTP backend answered with an error, as seen by its client.

    Args:
        status: The HTTP status code.
        code: The backend's error code from the JSON body.
        message: The backend's message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, retryable=status >= 500 or status == 429)
        self.status = status
        self.code = code
