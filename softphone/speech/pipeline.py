"""The speech route's work: an uploaded audio file in, transcript and summary out.

The HTTP backend (and the desktop app in embedded mode) streams an upload to
disk, calling :class:`UploadGuard` on every chunk so an oversized or
obviously wrong file is refused early, then calls :func:`transcribe_file`.
That checks the file with PyAV (format WAV, FLAC, MP3, Ogg/Opus or WebM, an
audio stream that decodes, duration within bounds), transcribes it with the
configured batch STT provider and summarizes it with the configured
summarizer (falling back to the offline one). Bad input raises
:class:`ValidationError` naming the field; :func:`http_status_for` maps it
to the status code the route returns. Nothing here writes files, so the
route only has to delete its own upload.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from softphone.config import Settings
from softphone.domain.summary import SpeakerRoles, SummaryCard
from softphone.errors import ConfigError, ValidationError
from softphone.speech.factory import make_batch_stt, make_offline_summarizer, make_summarizer
from softphone.speech.stt import BatchStt, Transcript
from softphone.speech.summarizer import Summarizer, summarize_with_fallback

# PyAV's container format names -> the name we report.
FORMATS: dict[str, str] = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg",
    "matroska,webm": "webm",
    "webm": "webm",
}
CODECS = {
    "wav": {"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_mulaw", "pcm_alaw"},
    "flac": {"flac"},
    "mp3": {"mp3", "mp3float"},
    "ogg": {"opus", "vorbis", "flac"},
    "webm": {"opus", "vorbis"},
}
CONTENT_TYPES = {
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/flac",
    "audio/x-flac",
    "audio/mpeg",
    "audio/mp3",
    "audio/ogg",
    "audio/opus",
    "audio/webm",
    "video/webm",
    "application/octet-stream",
}
MB = 1024 * 1024


def sniff_format(head: bytes) -> str | None:
    """The audio format the first bytes of a file announce, or None if none of ours."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


class UploadGuard:
    """Checks an upload while it streams in: size bound, content type, format magic.

    Args:
        max_bytes: The largest accepted upload.
        content_type: The request's ``Content-Type`` (checked if given).

    Raises:
        ValidationError: At construction (bad content type) or in :meth:`add`.
    """

    def __init__(self, *, max_bytes: int, content_type: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.received = 0
        self._head = b""
        if content_type:
            base = content_type.split(";")[0].strip().lower()
            if base not in CONTENT_TYPES:
                raise ValidationError(
                    "file.format", "unsupported type: send WAV, FLAC, MP3, Ogg/Opus or WebM"
                )

    @classmethod
    def from_settings(cls, settings: Settings, *, content_type: str | None = None) -> UploadGuard:
        """A guard with the ``speech_max_upload_mb`` bound."""
        return cls(max_bytes=settings.speech_max_upload_mb * MB, content_type=content_type)

    def add(self, chunk: bytes) -> None:
        """Account for the next chunk of the upload.

        Raises:
            ValidationError: ``file.size`` when the upload grew past the bound;
                ``file.format`` when its first bytes are not a supported format.
        """
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise ValidationError(
                "file.size", f"too large: at most {self.max_bytes // MB or 1} MB are accepted"
            )
        if len(self._head) < 12:
            self._head += chunk[: 12 - len(self._head)]
            if len(self._head) >= 12 and sniff_format(self._head) is None:
                raise ValidationError(
                    "file.format",
                    "not a supported audio file: send WAV, FLAC, MP3, Ogg/Opus or WebM",
                )

    def finish(self) -> None:
        """Call when the upload is complete.

        Raises:
            ValidationError: The upload was empty or too short to be audio.
        """
        if self.received == 0:
            raise ValidationError("file", "the upload is empty")
        if sniff_format(self._head) is None:
            raise ValidationError(
                "file.format", "not a supported audio file: send WAV, FLAC, MP3, Ogg/Opus or WebM"
            )


def http_status_for(exc: ValidationError) -> int:
    """The HTTP status the speech route answers a validation error with."""
    if exc.field == "file.size":
        return 413
    if exc.field == "file.format":
        return 415
    if exc.field == "file.duration":
        return 422
    return 400


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What PyAV found in an audio file."""

    format: str
    codec: str
    duration_s: float
    sample_rate: int
    channels: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def probe_audio(path: Path, *, max_duration_s: float, max_bytes: int | None = None) -> AudioInfo:
    """Check an audio file with PyAV (blocking: call in a worker thread).

    Raises:
        ValidationError: ``file`` (missing, empty, corrupt), ``file.format``
            (not WAV/FLAC/MP3/Ogg/WebM or no audio stream), ``file.size``,
            ``file.duration`` (longer than ``max_duration_s``).
    """
    import av

    if not path.is_file():
        raise ValidationError("file", "no such file")
    size = path.stat().st_size
    if size == 0:
        raise ValidationError("file", "the file is empty")
    if max_bytes is not None and size > max_bytes:
        raise ValidationError(
            "file.size", f"too large: at most {max_bytes // MB or 1} MB are accepted"
        )
    with path.open("rb") as f:
        if sniff_format(f.read(12)) is None:
            raise ValidationError(
                "file.format", "not a supported audio file: send WAV, FLAC, MP3, Ogg/Opus or WebM"
            )
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ValidationError("file", "the audio file could not be read (corrupt?)") from exc
    with container:
        fmt = FORMATS.get(container.format.name)
        if fmt is None:
            raise ValidationError(
                "file.format", "unsupported format: send WAV, FLAC, MP3, Ogg/Opus or WebM"
            )
        if not container.streams.audio:
            raise ValidationError("file.format", "the file has no audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        if codec not in CODECS[fmt]:
            raise ValidationError("file.format", f"unsupported audio codec in a {fmt} file")
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
        duration = 0.0
        if container.duration:
            duration = container.duration / 1_000_000
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        try:
            if duration <= 0:
                # WebM from a browser recorder has no duration: count decoded samples,
                # stopping as soon as the bound is passed.
                samples = 0
                for frame in container.decode(stream):
                    samples += frame.samples
                    rate = rate or frame.sample_rate
                    if rate and samples / rate > max_duration_s:
                        break
                duration = samples / rate if rate else 0.0
            else:
                for _ in zip(range(3), container.decode(stream), strict=False):
                    pass  # the first frames must decode
        except (av.error.FFmpegError, ValueError) as exc:
            raise ValidationError("file", "the audio could not be decoded (corrupt?)") from exc
    if duration <= 0:
        raise ValidationError("file", "the file holds no audio")
    if duration > max_duration_s:
        raise ValidationError(
            "file.duration", f"too long: at most {max_duration_s:g} seconds are accepted"
        )
    return AudioInfo(fmt, codec, round(duration, 3), rate, channels, size)


@dataclasses.dataclass(frozen=True)
class SpeechResult:
    """The speech route's answer."""

    audio: AudioInfo
    transcript: Transcript
    summary: SummaryCard

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``audio``, ``transcript``, ``summary``."""
        return {
            "audio": self.audio.to_dict(),
            "transcript": self.transcript.to_dict(),
            "summary": self.summary.to_dict(),
        }


async def transcribe_file(
    path: Path,
    settings: Settings,
    *,
    speaker: str = "caller",
    stt: BatchStt | None = None,
    summarizer: Summarizer | None = None,
    roles: SpeakerRoles | None = None,
) -> SpeechResult:
    """Check, transcribe and summarize an uploaded audio file.

    Args:
        path: The upload, already on disk (the caller deletes it afterwards).
        settings: Which providers and bounds to use.
        speaker: Identity given to the transcript's segments.
        stt: A provider to use instead of the configured one (not closed here).
        summarizer: A summarizer to use instead of the configured one (not closed here).
        roles: Who is the caller and who the agents, when the service knows it
            (e.g. ``SpeakerRoles(caller=speaker)`` for the caller's own track).

    Raises:
        ValidationError: The file is not acceptable (see :func:`probe_audio`).
        SpeechError: Transcription failed (the summary never fails: it falls back).
        ConfigError: A configured cloud provider has no API key.
    """
    info = await asyncio.to_thread(
        probe_audio,
        path,
        max_duration_s=settings.speech_max_duration_s,
        max_bytes=settings.speech_max_upload_mb * MB,
    )
    own_stt = stt is None
    engine = stt or make_batch_stt(settings)
    try:
        transcript = await engine.transcribe(path, speaker=speaker)
    finally:
        if own_stt:
            await engine.aclose()
    fallback = make_offline_summarizer(settings)
    own_sum = summarizer is None
    try:
        primary = summarizer or make_summarizer(settings)
    except ConfigError:
        primary = fallback  # a missing key degrades the summary, not the route
    try:
        card = await summarize_with_fallback(primary, fallback, transcript.segments, roles=roles)
    finally:
        if own_sum:
            await primary.aclose()
    return SpeechResult(info, transcript, card)
