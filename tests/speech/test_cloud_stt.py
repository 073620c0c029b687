"""AssemblyAI and OpenAI transcription over real HTTP against local servers following their APIs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from softphone.config import Secret, Settings
from softphone.errors import ConfigError, SpeechError, ValidationError
from softphone.speech.assemblyai import AssemblyAIStt
from softphone.speech.factory import make_batch_stt
from softphone.speech.openai_stt import OpenAIStt
from tests.providers.assemblyai_api import FakeAssemblyAI
from tests.providers.openai_api import FakeOpenAI

pytestmark = pytest.mark.integration

AAI_KEY = "aai-test-secret-456"


@pytest.fixture
def audio_file(tmp_path: Path) -> Path:
    """A 3 MB file: big enough that the upload goes out in several chunks."""
    path = tmp_path / "call.wav"
    path.write_bytes(b"RIFF" + b"\0" * (3 * 1024 * 1024))
    return path


def aai(api: FakeAssemblyAI, **kw: object) -> AssemblyAIStt:
    opts: dict[str, object] = {"poll_interval_s": 0.05, "poll_max_s": 0.2, "timeout_s": 20.0}
    opts.update(kw)
    return AssemblyAIStt(api_key=Secret(AAI_KEY), base_url=api.base_url, **opts)  # type: ignore[arg-type]


async def test_assemblyai_streams_the_upload_polls_and_maps_speakers(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    async with aai(assemblyai_api) as stt:
        result = await stt.transcribe(
            audio_file, speaker="call", speaker_map={"A": "agent-1", "B": "caller-1"}
        )
    assert [s.speaker for s in result.segments] == ["agent-1", "caller-1"]
    assert result.segments[1].text == "I was charged twice for order 58213."
    assert result.segments[1].start_s == pytest.approx(3.1)
    assert result.provider == "assemblyai"
    # The whole file arrived, in more than one chunk (streamed, not one buffer).
    assert audio_file.stat().st_size in assemblyai_api.uploads.values()
    assert len(assemblyai_api.upload_chunks) > 1
    assert assemblyai_api.hits["poll"] == 3  # queued -> processing -> processing -> completed
    job = list(assemblyai_api.jobs.values())[-1]
    assert job.request["speaker_labels"] is True


async def test_assemblyai_rate_limit_and_server_errors_are_retried(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    assemblyai_api.script("upload", "error")
    assemblyai_api.script("transcript", "rate_limit")
    assemblyai_api.script("poll", "error", "rate_limit")
    async with aai(assemblyai_api) as stt:
        result = await stt.transcribe(audio_file, speaker="caller-1")
    assert result.text.startswith("Thank you for calling")
    assert assemblyai_api.hits["upload"] == 2 and assemblyai_api.hits["transcript"] == 2


async def test_assemblyai_client_errors_are_not_retried(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    assemblyai_api.script("transcript", "bad_request", "ok")
    async with aai(assemblyai_api) as stt:
        with pytest.raises(SpeechError, match="HTTP 400: Invalid request") as info:
            await stt.transcribe(audio_file)
    assert not info.value.retryable
    assert assemblyai_api.hits["transcript"] == 1


async def test_assemblyai_error_status_is_reported(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    assemblyai_api.script("poll", "ok", "api_error")
    async with aai(assemblyai_api) as stt:
        with pytest.raises(SpeechError, match="could not transcribe the file: Transcoding failed"):
            await stt.transcribe(audio_file)


async def test_assemblyai_wrong_key_is_reported_without_the_key(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    stt = AssemblyAIStt(api_key=Secret("aai-wrong-789"), base_url=assemblyai_api.base_url)
    async with stt:
        with pytest.raises(SpeechError, match="HTTP 401") as info:
            await stt.transcribe(audio_file)
    assert "aai-wrong-789" not in str(info.value)
    assert assemblyai_api.hits["upload"] == 1


async def test_assemblyai_hang_times_out(assemblyai_api: FakeAssemblyAI, audio_file: Path) -> None:
    assemblyai_api.script("poll", "hang")
    async with aai(assemblyai_api, timeout_s=1.5) as stt:
        with pytest.raises(SpeechError, match="timed out") as info:
            await stt.transcribe(audio_file)
    assert info.value.retryable


async def test_assemblyai_can_be_cancelled(
    assemblyai_api: FakeAssemblyAI, audio_file: Path
) -> None:
    assemblyai_api.script("poll", "hang")
    async with aai(assemblyai_api) as stt:
        task = asyncio.create_task(stt.transcribe(audio_file))
        while assemblyai_api.hits["poll"] == 0:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_assemblyai_missing_file_is_a_validation_error(tmp_path: Path) -> None:
    async with AssemblyAIStt(api_key=Secret("k"), base_url="http://127.0.0.1:9") as stt:
        with pytest.raises(ValidationError):
            await stt.transcribe(tmp_path / "nope.wav")


async def test_openai_transcription(openai_api: FakeOpenAI, audio_file: Path) -> None:
    openai_api.transcript_text = "I would like to cancel my subscription."
    stt = OpenAIStt(api_key=Secret("sk-test-secret-123"), base_url=openai_api.v1, model="whisper-1")
    async with stt:
        result = await stt.transcribe(audio_file, speaker="caller-1")
    assert result.text == "I would like to cancel my subscription."
    assert result.segments[0].speaker == "caller-1"
    (req,) = openai_api.requests
    assert req.path == "/v1/audio/transcriptions"
    assert req.body["model"] == "whisper-1" and req.body["response_format"] == "verbose_json"
    assert req.file_bytes == audio_file.stat().st_size and req.file_name == "call.wav"


async def test_openai_transcription_errors(openai_api: FakeOpenAI, audio_file: Path) -> None:
    stt = OpenAIStt(api_key=Secret("sk-test-secret-123"), base_url=openai_api.v1, max_retries=1)
    async with stt:
        openai_api.script("rate_limit", "ok")
        assert (await stt.transcribe(audio_file)).text
        openai_api.always("error")
        with pytest.raises(SpeechError, match="HTTP 500") as info:
            await stt.transcribe(audio_file)
        assert info.value.retryable
        openai_api.script("invalid")
        with pytest.raises(SpeechError):
            await stt.transcribe(audio_file)


def test_factory_picks_the_provider_from_settings(tmp_path: Path) -> None:
    assert make_batch_stt(Settings(home=tmp_path)).name == "local"
    s = Settings(home=tmp_path, stt_provider="assemblyai", assemblyai_api_key=Secret("k"))
    assert make_batch_stt(s).name == "assemblyai"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_batch_stt(Settings(home=tmp_path, stt_provider="openai"))
