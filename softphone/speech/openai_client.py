"""Mapping of the ``openai`` package's errors onto our :class:`SpeechError`."""

from __future__ import annotations

import openai

from softphone.errors import SpeechError


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
