"""Batch transcription through an OpenAI-compatible ``audio.transcriptions`` endpoint.

Works with OpenAI itself or any compatible server (base URL setting). HTTP
retries (429 honouring ``retry-after``, 5xx, network) are the ``openai``
client's; other 4xx are not retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai

from softphone.config import Secret
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import SpeechError
from softphone.speech.openai_client import make_openai_client, speech_error_from_openai
from softphone.speech.stt import BatchStt, Transcript


class OpenAIStt(BatchStt):
    """``audio.transcriptions`` with ``verbose_json`` (segments with times).

    Args:
        api_key: The API key (``OPENAI_API_KEY``).
        base_url: API base URL including ``/v1``; empty for OpenAI's own.
        model: Transcription model, e.g. ``whisper-1``.
        timeout_s: How long one transcription may take, retries included.
        max_retries: HTTP retries of the ``openai`` client.

    Raises:
        ConfigError: No API key.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: Secret | None,
        base_url: str = "",
        model: str = "whisper-1",
        timeout_s: float = 300.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        self.model = model
        self._client = make_openai_client(
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
            what="openai speech-to-text",
        )

    async def _transcribe_impl(
        self, path: Path, speaker: str, speaker_map: dict[str, str], leg: str
    ) -> Transcript:
        try:
            # The openai client reads file objects lazily while it sends them.
            with path.open("rb") as f:
                resp: Any = await self._client.audio.transcriptions.create(
                    file=(path.name, f),
                    model=self.model,
                    response_format="verbose_json",
                    language="en",
                )
        except openai.OpenAIError as exc:
            raise speech_error_from_openai(exc, "openai transcription") from exc
        text = getattr(resp, "text", None)
        if not isinstance(text, str):
            raise SpeechError("openai transcription returned no text")
        raw_segments = getattr(resp, "segments", None) or []
        segs: list[TranscriptSegment] = []
        for i, s in enumerate(raw_segments):
            start = float(getattr(s, "start", 0.0))
            end = float(getattr(s, "end", start))
            t = str(getattr(s, "text", "")).strip()
            if t:
                segs.append(
                    TranscriptSegment(speaker, start, end, t, leg=leg, segment_id=f"{speaker}-{i}")
                )
        if not segs and text.strip():
            segs.append(
                TranscriptSegment(
                    speaker,
                    0.0,
                    float(getattr(resp, "duration", 0.0) or 0.0),
                    text.strip(),
                    leg=leg,
                    segment_id=f"{speaker}-0",
                )
            )
        return Transcript(tuple(segs), self.name, float(getattr(resp, "duration", 0.0) or 0.0))

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
