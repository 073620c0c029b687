"""The batch speech-to-text interface: an audio file in, transcript segments out.

:meth:`BatchStt.transcribe` owns the timeout, timing and error wrapping; a
provider implements only :meth:`BatchStt._transcribe_impl`. Cancellation
(``asyncio.CancelledError``) always propagates, so a caller can stop a
transcription at any point.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from softphone.domain.transcript import TranscriptSegment
from softphone.errors import SoftphoneError, SpeechError, ValidationError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Transcript:
    """What a batch STT engine heard in one file.

    Attributes:
        segments: Final segments in time order.
        provider: Which engine made it.
        duration_s: Length of the audio, when the engine reports it.
    """

    segments: tuple[TranscriptSegment, ...]
    provider: str
    duration_s: float = 0.0

    @property
    def text(self) -> str:
        """All segments' text joined by spaces."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "provider": self.provider,
            "duration_s": self.duration_s,
            "text": self.text,
            "segments": [s.to_dict() for s in self.segments],
        }


class BatchStt(abc.ABC):
    """Base class of every batch STT provider.

    Args:
        timeout_s: How long one transcription may take in all.
    """

    name = "base"

    def __init__(self, *, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s

    async def transcribe(
        self,
        path: Path,
        *,
        speaker: str = "speaker",
        speaker_map: Mapping[str, str] | None = None,
        leg: str = "call",
    ) -> Transcript:
        """Transcribe one audio file.

        Args:
            path: The audio file (any format PyAV reads, for the local engine).
            speaker: Identity given to segments when the provider has no labels.
            speaker_map: Provider speaker labels (``A``, ``B``) to identities.
            leg: The call leg the segments belong to.

        Raises:
            ValidationError: The file does not exist.
            SpeechError: The provider failed or did not finish within ``timeout_s``.
        """
        if not await asyncio.to_thread(path.is_file):
            raise ValidationError("file", "no such audio file")
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                self._transcribe_impl(path, speaker, dict(speaker_map or {}), leg), self.timeout_s
            )
        except TimeoutError as exc:
            raise SpeechError(
                f"{self.name} transcription timed out after {self.timeout_s:g} s", retryable=True
            ) from exc
        except (SpeechError, ValidationError):
            raise
        except SoftphoneError as exc:
            raise SpeechError(
                f"{self.name} transcription failed: {exc.message}", retryable=exc.retryable
            ) from exc
        except Exception as exc:
            raise SpeechError(
                f"{self.name} transcription failed ({exc.__class__.__name__})"
            ) from exc
        log.info(
            "transcription made",
            extra={"stt": self.name, "ms": round((time.monotonic() - started) * 1000)},
        )
        return result

    @abc.abstractmethod
    async def _transcribe_impl(
        self, path: Path, speaker: str, speaker_map: dict[str, str], leg: str
    ) -> Transcript:
        """Provider-specific transcription; may raise anything, the base wraps it."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers need it
        """Release the provider's resources (HTTP clients, threads)."""

    async def __aenter__(self) -> BatchStt:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
