"""The ``openai`` package as our OpenAI-compatible providers use it: client and errors."""

from __future__ import annotations

import openai

from softphone.config import Secret
from softphone.errors import ConfigError, SpeechError


def make_openai_client(
    *, api_key: Secret | None, base_url: str, timeout_s: float, max_retries: int, what: str
) -> openai.AsyncOpenAI:
    """An async client for an OpenAI-compatible server.

    The ``openai`` client owns HTTP retries (5xx, 429, connection errors,
    with backoff; never other 4xx).

    Raises:
        ConfigError: No API key; ``what`` names the feature that needs it.
    """
    if api_key is None or not api_key.get():
        raise ConfigError(f"{what} needs an API key: set OPENAI_API_KEY")
    return openai.AsyncOpenAI(
        api_key=api_key.get(),
        base_url=base_url or None,
        timeout=timeout_s,
        max_retries=max_retries,
    )


def speech_error_from_openai(exc: openai.OpenAIError, what: str) -> SpeechError:
    """Our error for an ``openai`` failure; 5xx, 429, timeouts and network are retryable.

    The message names the status and the provider's error code, never the
    request (which holds transcript text) or the key.
    """
    if isinstance(exc, openai.APITimeoutError):
        return SpeechError(f"{what} timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return SpeechError(f"{what} could not reach the server", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = getattr(exc, "code", None) or getattr(exc, "type", None) or ""
        return SpeechError(
            f"{what} failed: HTTP {status}" + (f" ({code})" if code else ""),
            retryable=status >= 500 or status == 429,
            details={"status": status},
        )
    return SpeechError(f"{what} failed ({exc.__class__.__name__})")
