"""The speech route's pipeline: upload checks, format probing, transcript and summary."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from softphone.config import Secret, Settings
from softphone.errors import SpeechError, ValidationError
from softphone.speech.pipeline import (
    UploadGuard,
    http_status_for,
    probe_audio,
    sniff_format,
    transcribe_file,
)
from tests.providers.openai_api import FakeOpenAI
from tests.speech.corpus import SAMPLE_RATE, RenderedCall, wer, write_wav

pytestmark = pytest.mark.integration

FORMATS = {  # our name -> (PyAV container, codec, suffix)
    "flac": ("flac", "flac", ".flac"),
    "mp3": ("mp3", "libmp3lame", ".mp3"),
    "ogg": ("ogg", "libopus", ".ogg"),
    "webm": ("webm", "libopus", ".webm"),
}


def encode(samples: np.ndarray, path: Path, container: str, codec: str) -> Path:
    """Encode 48 kHz mono int16 samples with PyAV."""
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=SAMPLE_RATE)
        stream.layout = "mono"  # type: ignore[attr-defined]
        n = 960
        for i in range(0, len(samples) - n + 1, n):
            frame = av.AudioFrame.from_ndarray(
                samples[i : i + n].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            frame.pts = i
            for packet in stream.encode(frame):  # type: ignore[attr-defined]
                out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[attr-defined]
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(rendered_calls: dict[str, RenderedCall]) -> tuple[np.ndarray, str]:
    """One caller turn (about 5 s) and its text."""
    rc = rendered_calls["07_appointment"]
    utt = rc.utterances[1]
    a, b = int((utt.start_s - 0.3) * SAMPLE_RATE), int((utt.end_s + 0.3) * SAMPLE_RATE)
    return rc.tracks[utt.identity][a:b].copy(), utt.text


@pytest.fixture(scope="module")
def clip_files(
    clip: tuple[np.ndarray, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    files = {"wav": write_wav(root / "clip.wav", clip[0])}
    for name, (container, codec, suffix) in FORMATS.items():
        files[name] = encode(clip[0], root / f"clip{suffix}", container, codec)
    return files


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm"])
async def test_each_supported_format_is_transcribed_and_summarized(
    fmt: str, clip: tuple[np.ndarray, str], clip_files: dict[str, Path], settings: Settings
) -> None:
    result = await transcribe_file(clip_files[fmt], settings, speaker="caller-emma")
    assert result.audio.format == fmt
    assert result.audio.duration_s == pytest.approx(len(clip[0]) / SAMPLE_RATE, abs=0.2)
    assert wer(clip[1], result.transcript.text) < 0.3, result.transcript.text
    assert result.summary.source == "offline" and result.summary.reason
    body = json.loads(json.dumps(result.to_dict()))
    assert body["transcript"]["segments"][0]["speaker"] == "caller-emma"
    assert set(body) == {"audio", "transcript", "summary"}


async def test_upload_guard_bounds_size_and_checks_the_type() -> None:
    guard = UploadGuard(max_bytes=1000, content_type="audio/wav")
    guard.add(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    guard.add(b"\x00" * 900)
    with pytest.raises(ValidationError) as big:
        guard.add(b"\x00" * 200)
    assert http_status_for(big.value) == 413
    with pytest.raises(ValidationError) as kind:
        UploadGuard(max_bytes=1000, content_type="text/html; charset=utf-8")
    assert http_status_for(kind.value) == 415
    text = UploadGuard(max_bytes=1000)
    with pytest.raises(ValidationError) as magic:
        text.add(b"hello, this is not audio at all")
    assert http_status_for(magic.value) == 415
    with pytest.raises(ValidationError) as empty:
        UploadGuard(max_bytes=1000).finish()
    assert http_status_for(empty.value) == 400


def test_sniffing_knows_each_format(clip_files: dict[str, Path]) -> None:
    for name, path in clip_files.items():
        assert sniff_format(path.read_bytes()[:12]) == name
    assert sniff_format(b"%PDF-1.7....") is None


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"", "file"),
        (b"just some text pretending to be audio", "file.format"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 64, "file"),
    ],
)
def test_bad_files_are_refused_with_a_clear_field(
    content: bytes, field: str, tmp_path: Path
) -> None:
    path = tmp_path / "upload.wav"
    path.write_bytes(content)
    with pytest.raises(ValidationError) as info:
        probe_audio(path, max_duration_s=60)
    assert info.value.field == field
    assert path.exists()  # the route deletes its own upload; nothing else was created
    assert list(tmp_path.iterdir()) == [path]


async def test_too_long_and_too_large_files_are_refused(
    clip_files: dict[str, Path], tmp_path: Path
) -> None:
    short = Settings(home=tmp_path, speech_max_duration_s=2.0)
    for fmt in ("wav", "webm"):  # webm from browsers has no duration header: samples are counted
        with pytest.raises(ValidationError) as info:
            await transcribe_file(clip_files[fmt], short)
        assert info.value.field == "file.duration" and http_status_for(info.value) == 422
    with pytest.raises(ValidationError) as big:
        probe_audio(clip_files["wav"], max_duration_s=60, max_bytes=1000)
    assert http_status_for(big.value) == 413


async def test_summary_falls_back_when_the_llm_fails(
    clip_files: dict[str, Path], openai_api: FakeOpenAI, tmp_path: Path
) -> None:
    openai_api.always("error")
    s = Settings(
        home=tmp_path,
        summarizer="openai",
        openai_base_url=openai_api.v1,
        openai_api_key=Secret("sk-test-secret-123"),
        summary_timeout_s=2.0,
    )
    result = await transcribe_file(clip_files["wav"], s)
    assert result.summary.fallback and result.summary.source == "offline"
    assert result.transcript.text


async def test_stt_failure_is_a_speech_error(
    clip_files: dict[str, Path], openai_api: FakeOpenAI, tmp_path: Path
) -> None:
    openai_api.always("bad_request")
    s = Settings(
        home=tmp_path,
        stt_provider="openai",
        openai_base_url=openai_api.v1,
        openai_api_key=Secret("sk-test-secret-123"),
    )
    with pytest.raises(SpeechError, match="HTTP 400"):
        await transcribe_file(clip_files["mp3"], s)
