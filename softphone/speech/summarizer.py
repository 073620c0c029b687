"""The summarizer interface: transcript segments in, a summary card out.

:meth:`Summarizer.summarize` owns the timeout and the error wrapping; a
provider implements only :meth:`Summarizer._summarize_impl`, or
:meth:`Summarizer._summarize_with_roles` when it uses who is who in the call
(:class:`~softphone.domain.summary.SpeakerRoles`: the caller's and the agents'
identities, from the call registry).
:func:`summarize_with_fallback` is what callers use: it runs the configured
summarizer and, if it fails or times out, the offline one, marking the card
as a fallback.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from types import TracebackType

from softphone.domain.summary import SpeakerRoles, SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import SoftphoneError, SpeechError

log = logging.getLogger(__name__)


class Summarizer(abc.ABC):
    """Base class of every summarizer.

    Args:
        timeout_s: How long one summary may take.
    """

    name = "base"

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    async def summarize(
        self, segments: Sequence[TranscriptSegment], *, roles: SpeakerRoles | None = None
    ) -> SummaryCard:
        """Summarize a call.

        Args:
            segments: The transcript (each segment carries its speaker's identity).
            roles: Who is the caller and who the agents, when the service knows it.

        Raises:
            SpeechError: The provider failed or did not answer within ``timeout_s``.
        """
        started = time.monotonic()
        try:
            card = await asyncio.wait_for(
                self._summarize_with_roles(segments, roles), self.timeout_s
            )
        except TimeoutError as exc:
            raise SpeechError(
                f"{self.name} summarizer timed out after {self.timeout_s:g} s", retryable=True
            ) from exc
        except SpeechError:
            raise
        except SoftphoneError as exc:
            raise SpeechError(
                f"{self.name} summarizer failed: {exc.message}", retryable=exc.retryable
            ) from exc
        except Exception as exc:
            raise SpeechError(f"{self.name} summarizer failed ({exc.__class__.__name__})") from exc
        log.info(
            "summary made",
            extra={"summarizer": self.name, "ms": round((time.monotonic() - started) * 1000)},
        )
        return dataclasses.replace(card, source=self.name)

    async def aclose(self) -> None:  # noqa: B027 - optional hook for HTTP-based providers
        """Release the provider's resources (HTTP clients); the base holds none."""

    async def __aenter__(self) -> Summarizer:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def _summarize_impl(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        """Provider-specific summarizing; may raise anything, the base wraps it."""

    async def _summarize_with_roles(
        self, segments: Sequence[TranscriptSegment], roles: SpeakerRoles | None
    ) -> SummaryCard:
        """Summarizing that uses ``roles``; by default they are ignored.

        A provider that can tell the caller from the agent (labels in a
        prompt, facts per speaker) overrides this instead of ``_summarize_impl``.
        """
        return await self._summarize_impl(segments)


async def summarize_with_fallback(
    primary: Summarizer,
    fallback: Summarizer,
    segments: Sequence[TranscriptSegment],
    *,
    roles: SpeakerRoles | None = None,
) -> SummaryCard:
    """Summarize with ``primary``; on any failure use ``fallback`` and mark the card.

    Never raises for a provider failure: a transfer must not fail because the
    summary could not be made. ``roles`` (who is the caller, who the agents)
    goes to both. If the fallback itself fails, an empty card
    marked as fallback is returned.
    """
    if primary is fallback or primary.name == fallback.name:
        try:
            return await primary.summarize(segments, roles=roles)
        except SpeechError:
            log.exception("offline summarizer failed")
            return SummaryCard(fallback=True, source=fallback.name)
    try:
        return await primary.summarize(segments, roles=roles)
    except SpeechError as exc:
        log.warning(
            "summarizer failed; using the offline one",
            extra={"summarizer": primary.name, "error": exc.message},
        )
    try:
        card = await fallback.summarize(segments, roles=roles)
    except SpeechError:
        log.exception("fallback summarizer failed")
        return SummaryCard(fallback=True, source=fallback.name)
    return dataclasses.replace(card, fallback=True)
