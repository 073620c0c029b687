"""Batch transcription with AssemblyAI's REST API, through httpx.

The flow follows AssemblyAI's published v2 API:

1. ``POST /v2/upload`` with the raw audio as the body, streamed from disk in
   chunks (a large file is never read into memory), answers ``upload_url``;
2. ``POST /v2/transcript`` with ``audio_url`` (and ``speaker_labels``)
   answers the transcript's ``id`` and ``status`` (``queued``);
3. ``GET /v2/transcript/{id}`` is polled with growing intervals until
   ``status`` is ``completed`` (text, words, utterances with speaker labels
   ``A``, ``B``...) or ``error`` (with the API's ``error`` message).

Every request carries ``authorization: <key>``. A 429 is retried after the
``retry-after`` it names; 5xx and network errors are retried with backoff a
few times; any other 4xx is reported at once and never retried. The whole
job is bounded by ``timeout_s``, and cancelling the awaiting task stops it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from softphone.config import Secret
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import ConfigError, SpeechError
from softphone.http_client import tls_context
from softphone.speech.stt import BatchStt, Transcript

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_RETRY_AFTER_S = 60.0


async def _file_chunks(path: Path, chunk: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """The file's bytes in chunks, each read in a worker thread."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while True:
            data = await asyncio.to_thread(f.read, chunk)
            if not data:
                return
            yield data
    finally:
        await asyncio.to_thread(f.close)


def _retry_after(resp: httpx.Response, default: float) -> float:
    raw = resp.headers.get("retry-after", "")
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(raw)))
    except ValueError:
        return default


def _api_error(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    return str(err)[:200] if err else ""


class AssemblyAIStt(BatchStt):
    """AssemblyAI transcription: streamed upload, transcript request, polling.

    Args:
        api_key: The API key (``ASSEMBLYAI_API_KEY``).
        base_url: API base URL (``https://api.assemblyai.com``).
        timeout_s: How long the whole job may take (upload, queue, processing).
        request_timeout_s: How long one HTTP request may take.
        poll_interval_s: First polling interval; it grows up to ``poll_max_s``.
        poll_max_s: Longest polling interval.
        max_attempts: Tries per request for 429, 5xx and network errors.
        speaker_labels: Ask for speaker diarization (labels ``A``, ``B``...).

    Raises:
        ConfigError: No API key.
    """

    name = "assemblyai"

    def __init__(
        self,
        *,
        api_key: Secret | None,
        base_url: str = "https://api.assemblyai.com",
        timeout_s: float = 600.0,
        request_timeout_s: float = 30.0,
        poll_interval_s: float = 0.5,
        poll_max_s: float = 5.0,
        max_attempts: int = 4,
        speaker_labels: bool = True,
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        if api_key is None or not api_key.get():
            raise ConfigError("AssemblyAI needs an API key: set ASSEMBLYAI_API_KEY")
        self.poll_interval_s = poll_interval_s
        self.poll_max_s = poll_max_s
        self.max_attempts = max(1, max_attempts)
        self.speaker_labels = speaker_labels
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": api_key.get()},
            timeout=httpx.Timeout(request_timeout_s, connect=min(10.0, request_timeout_s)),
            # Connection failures before a request is sent are retried by httpx itself.
            transport=httpx.AsyncHTTPTransport(retries=2, verify=tls_context()),
        )

    async def _request(
        self, method: str, url: str, *, what: str, body: Callable[[], Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """One API call with retries for 429 (after ``retry-after``), 5xx and network errors."""
        backoff = 0.5
        for attempt in range(1, self.max_attempts + 1):
            last_try = attempt == self.max_attempts
            try:
                if body is not None:
                    kw["content"] = body()  # a fresh stream for each try
                resp = await self._client.request(method, url, **kw)
            except httpx.TimeoutException as exc:
                if last_try:
                    raise SpeechError(f"AssemblyAI {what} timed out", retryable=True) from exc
                await asyncio.sleep(backoff)
                backoff *= 2
                continue
            except httpx.TransportError as exc:
                if last_try:
                    raise SpeechError(
                        f"AssemblyAI {what}: could not reach the server", retryable=True
                    ) from exc
                await asyncio.sleep(backoff)
                backoff *= 2
                continue
            status = resp.status_code
            if status == 429 and not last_try:
                wait = _retry_after(resp, backoff)
                log.warning("AssemblyAI rate limited", extra={"retry_after_s": wait})
                await asyncio.sleep(wait)
                continue
            if status >= 500 and not last_try:
                await asyncio.sleep(backoff * (1 + random.random() / 4))
                backoff *= 2
                continue
            if status >= 400:
                detail = _api_error(resp)
                raise SpeechError(
                    f"AssemblyAI {what} failed: HTTP {status}" + (f": {detail}" if detail else ""),
                    retryable=status >= 500 or status == 429,
                    details={"status": status},
                )
            try:
                data = resp.json()
            except ValueError as exc:
                raise SpeechError(f"AssemblyAI {what}: the answer is not JSON") from exc
            if not isinstance(data, dict):
                raise SpeechError(f"AssemblyAI {what}: unexpected answer")
            return data
        raise SpeechError(f"AssemblyAI {what} failed", retryable=True)  # pragma: no cover

    async def _transcribe_impl(
        self, path: Path, speaker: str, speaker_map: dict[str, str], leg: str
    ) -> Transcript:
        size = (await asyncio.to_thread(path.stat)).st_size
        uploaded = await self._request(
            "POST",
            "/v2/upload",
            what="upload",
            body=lambda: _file_chunks(path),
            headers={"content-type": "application/octet-stream", "content-length": str(size)},
        )
        upload_url = uploaded.get("upload_url")
        if not isinstance(upload_url, str):
            raise SpeechError("AssemblyAI upload: no upload_url in the answer")
        job = await self._request(
            "POST",
            "/v2/transcript",
            what="transcript request",
            json={
                "audio_url": upload_url,
                "speaker_labels": self.speaker_labels,
                "language_code": "en",
            },
        )
        tid = job.get("id")
        if not isinstance(tid, str) or not tid:
            raise SpeechError("AssemblyAI transcript request: no id in the answer")
        interval = self.poll_interval_s
        while True:
            status = job.get("status")
            if status == "completed":
                return self._to_transcript(job, speaker, speaker_map, leg)
            if status == "error":
                err = str(job.get("error") or "unknown error")[:200]
                raise SpeechError(f"AssemblyAI could not transcribe the file: {err}")
            if status not in ("queued", "processing"):
                raise SpeechError("AssemblyAI transcript: unexpected status")
            await asyncio.sleep(interval)
            interval = min(self.poll_max_s, interval * 1.5)
            job = await self._request("GET", f"/v2/transcript/{tid}", what="poll")

    def _to_transcript(
        self, job: dict[str, Any], speaker: str, speaker_map: dict[str, str], leg: str
    ) -> Transcript:
        segs: list[TranscriptSegment] = []
        utterances = job.get("utterances") or []
        for i, u in enumerate(utterances if isinstance(utterances, list) else []):
            if not isinstance(u, dict) or not str(u.get("text", "")).strip():
                continue
            label = str(u.get("speaker") or "")
            who = speaker_map.get(label) or (f"{speaker}-{label}" if label else speaker)
            segs.append(
                TranscriptSegment(
                    speaker=who,
                    start_s=float(u.get("start", 0)) / 1000,
                    end_s=float(u.get("end", 0)) / 1000,
                    text=str(u["text"]).strip(),
                    leg=leg,
                    segment_id=f"{speaker}-{i}",
                )
            )
        text = job.get("text")
        if not segs and isinstance(text, str) and text.strip():
            words = job.get("words") or []
            end = float(words[-1].get("end", 0)) / 1000 if words else 0.0
            segs.append(
                TranscriptSegment(
                    speaker, 0.0, end, text.strip(), leg=leg, segment_id=f"{speaker}-0"
                )
            )
        duration = job.get("audio_duration")
        return Transcript(
            tuple(segs), self.name, float(duration) if isinstance(duration, int | float) else 0.0
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
