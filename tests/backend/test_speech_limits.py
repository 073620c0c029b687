"""Bounded speech work, against the real backend under uvicorn.

The backend runs with one worker, room for one more request, one request
per key at once, three per key per minute and a 20 s cap on audio. Uploads
held open mid-body keep requests in flight for as long as a test needs,
so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from softphone.infra.local_server import LocalLiveKitServer
from tests.backend.conftest import (
    declared_seconds,
    decoded_seconds,
    espeak_wav,
    lying_ogg,
    metrics,
    sample,
    tone_ogg,
    until,
)
from tests.transfer.backend_process import BackendProcess

pytestmark = pytest.mark.integration

MAX_DURATION_S = 20
LOBBY = "lobby-speech-limits"
NOT_AUDIO = b"this is not audio at all " * 40
# Sniffs as WAV; what follows is no audio PyAV can read.
WAV_MAGIC = b"RIFF\x24\x00\x00\x00WAVE" + b"\x00" * 64
SPEECH = (
    "Hello, this is a customer calling about order number one two three four five. "
    "The parcel arrived yesterday and the screen of the laptop was cracked. "
    "I would like a replacement or a refund, and please call me back tomorrow morning."
)


@pytest.fixture(scope="module")
async def backend(
    livekit_server: LocalLiveKitServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BackendProcess]:
    async with BackendProcess(
        livekit_server=livekit_server,
        workdir=tmp_path_factory.mktemp("speech-limits"),
        lobby=LOBBY,
        offer_timeout_s=3.0,
        extra_args=(
            "--speech-workers",
            "1",
            "--speech-queue",
            "1",
            "--speech-key-concurrency",
            "1",
            "--speech-key-rate",
            "3",
            "--speech-max-duration",
            str(MAX_DURATION_S),
        ),
    ) as backend:
        yield backend


@pytest.fixture
async def http(backend: BackendProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=backend.url, timeout=180) as client:
        yield client


def headers(backend: BackendProcess, identity: str, content_type: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.keys[identity]}", "Content-Type": content_type}


async def held(release: asyncio.Event) -> AsyncIterator[bytes]:
    """A body that starts like a WAV file and stops until ``release`` is set."""
    yield WAV_MAGIC
    await release.wait()
    yield b"\x00" * 64


async def in_flight(http: httpx.AsyncClient, backend: BackendProcess, n: int) -> None:
    """Wait until the backend has admitted ``n`` speech requests."""

    async def check() -> bool:
        values = await metrics(http, backend.keys["supervisor-0"])
        return sample(values, "softphone_speech_requests_in_flight") == n

    await until(check)


async def test_rate_per_key_is_429_with_retry_after_and_other_keys_go_on(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    before = await metrics(http, backend.keys["supervisor-0"])
    mine = headers(backend, "agent-a-1", "audio/wav")
    first = time.monotonic()
    for _ in range(3):
        res = await http.post("/v1/speech", content=NOT_AUDIO, headers=mine)
        assert res.status_code == 415, res.text
    res = await http.post("/v1/speech", content=NOT_AUDIO, headers=mine)
    assert res.status_code == 429, res.text
    assert res.json()["code"] == "rate_limited"
    # Three per minute: the next one is due 20 s after the first was taken.
    due_s = 20 - (time.monotonic() - first)
    assert abs(int(res.headers["Retry-After"]) - due_s) <= 1.5, res.headers["Retry-After"]
    assert res.headers["X-Request-ID"]
    # Another key is not affected.
    res = await http.post(
        "/v1/speech", content=NOT_AUDIO, headers=headers(backend, "agent-a-2", "audio/wav")
    )
    assert res.status_code == 415, res.text
    after = await metrics(http, backend.keys["supervisor-0"])
    rate = "softphone_speech_rejected_total"
    assert sample(after, rate, reason="rate") == sample(before, rate, reason="rate") + 1


async def test_concurrency_per_key_and_capacity(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    a3 = headers(backend, "agent-a-3", "audio/wav")
    a4 = headers(backend, "agent-a-4", "audio/wav")
    a5 = headers(backend, "agent-a-5", "audio/wav")
    held_a3 = asyncio.create_task(http.post("/v1/speech", content=held(first), headers=a3))
    try:
        await in_flight(http, backend, 1)
        # The same key again, while its first upload is in progress: 429.
        res = await http.post("/v1/speech", content=NOT_AUDIO, headers=a3)
        assert res.status_code == 429, res.text
        assert res.json()["code"] == "rate_limited"
        assert int(res.headers["Retry-After"]) >= 1
        # Another key gets in (capacity: one worker plus one).
        held_a4 = asyncio.create_task(http.post("/v1/speech", content=held(second), headers=a4))
        await in_flight(http, backend, 2)
        # Full: a third key is told to come back later, before its body is read.
        res = await http.post("/v1/speech", content=NOT_AUDIO, headers=a5)
        assert res.status_code == 503, res.text
        assert res.json()["code"] == "busy"
        assert int(res.headers["Retry-After"]) >= 1
        # Token requests are not speech work: they go on.
        res = await http.post(
            "/v1/tokens",
            json={"room": LOBBY},
            headers={"Authorization": f"Bearer {backend.keys['agent-a-5']}"},
        )
        assert res.status_code == 200, res.text
    finally:
        first.set()
        second.set()
    # The held uploads end as what they are: no audio PyAV can read.
    assert (await held_a3).status_code == 400
    assert (await held_a4).status_code == 400
    await in_flight(http, backend, 0)
    res = await http.post("/v1/speech", content=NOT_AUDIO, headers=a5)
    assert res.status_code == 415, res.text


async def test_over_long_audio_is_refused_from_its_header_without_a_job(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    long = tone_ogg(3 * MAX_DURATION_S)
    assert declared_seconds(long) > MAX_DURATION_S
    key = backend.keys["supervisor-0"]
    before = await metrics(http, key)
    res = await http.post(
        "/v1/speech", content=long, headers=headers(backend, "agent-a-6", "audio/ogg")
    )
    assert res.status_code == 422, res.text
    assert res.json()["code"] == "invalid_input"
    assert "too long" in res.json()["message"]
    after = await metrics(http, key)
    rejected = "softphone_speech_rejected_total"
    assert (
        sample(after, rejected, reason="duration")
        == sample(before, rejected, reason="duration") + 1
    )
    # No worker was asked to do anything.
    for result in ("ok", "invalid", "error", "timeout"):
        jobs = "softphone_speech_jobs_total"
        assert sample(after, jobs, result=result) == sample(before, jobs, result=result)


async def test_a_header_that_lies_about_the_length_is_stopped_at_the_cap(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    honest = tone_ogg(3 * MAX_DURATION_S)
    lying = lying_ogg(honest, claimed_s=2.0)
    # The lie works on a demuxer: the header says 2 s, the file holds 60 s.
    assert declared_seconds(lying) < MAX_DURATION_S
    assert decoded_seconds(lying) > 2 * MAX_DURATION_S
    key = backend.keys["supervisor-0"]
    before = await metrics(http, key)
    res = await http.post(
        "/v1/speech", content=lying, headers=headers(backend, "agent-a-7", "audio/ogg")
    )
    assert res.status_code == 422, res.text
    assert "too long" in res.json()["message"]
    after = await metrics(http, key)
    jobs = "softphone_speech_jobs_total"
    # A worker decoded it, up to the cap, and refused it: no transcript was made.
    assert sample(after, jobs, result="invalid") == sample(before, jobs, result="invalid") + 1
    assert sample(after, jobs, result="ok") == sample(before, jobs, result="ok")


async def test_tokens_answer_while_a_worker_transcribes(
    backend: BackendProcess, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    wav = await espeak_wav(tmp_path / "speech.wav", SPEECH)
    assert 5 < declared_seconds(wav) < MAX_DURATION_S
    key = backend.keys["supervisor-0"]
    upload = asyncio.create_task(
        http.post(
            "/v1/speech",
            params={"speaker": "caller-8"},
            content=wav,
            headers=headers(backend, "agent-a-8", "audio/wav"),
        )
    )

    async def working() -> bool:
        assert not upload.done() or upload.result().status_code == 200
        return sample(await metrics(http, key), "softphone_speech_jobs_running") == 1

    await until(working, timeout_s=120)
    res = await http.post(
        "/v1/tokens",
        json={"room": LOBBY},
        headers={"Authorization": f"Bearer {backend.keys['agent-a-9']}"},
    )
    assert res.status_code == 200, res.text
    assert res.json()["token"]
    res = await upload
    assert res.status_code == 200, res.text
    body = res.json()
    assert "order" in body["transcript"]["text"].lower()
    assert {s["speaker"] for s in body["transcript"]["segments"]} == {"caller-8"}
    assert body["summary"]["reason"]
    values = await metrics(http, key)
    assert sample(values, "softphone_speech_jobs_total", result="ok") >= 1
    assert sample(values, "softphone_speech_job_seconds_count") >= 1
    assert sample(values, "softphone_speech_queue_depth") == 0


async def test_a_request_whose_client_left_while_queued_costs_no_work(
    backend: BackendProcess, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    long = await espeak_wav(tmp_path / "long.wav", SPEECH)
    short = await espeak_wav(tmp_path / "short.wav", "Hello.")
    key = backend.keys["supervisor-0"]
    before = await metrics(http, key)
    busy = asyncio.create_task(
        http.post("/v1/speech", content=long, headers=headers(backend, "agent-a-10", "audio/wav"))
    )

    async def gauge(name: str, value: float) -> bool:
        return sample(await metrics(http, key), name) == value

    await until(lambda: gauge("softphone_speech_jobs_running", 1), timeout_s=120)
    async with httpx.AsyncClient(base_url=backend.url, timeout=180) as leaving:
        queued = asyncio.create_task(
            leaving.post(
                "/v1/speech", content=short, headers=headers(backend, "agent-a-11", "audio/wav")
            )
        )
        await until(lambda: gauge("softphone_speech_queue_depth", 1))
        queued.cancel()  # the client gives up and closes its connection
        with pytest.raises(asyncio.CancelledError):
            await queued
    assert (await busy).status_code == 200
    rejected, jobs = "softphone_speech_rejected_total", "softphone_speech_jobs_total"

    async def given_up() -> bool:
        values = await metrics(http, key)
        return sample(values, rejected, reason="abandoned") == (
            sample(before, rejected, reason="abandoned") + 1
        )

    await until(given_up)
    after = await metrics(http, key)
    # Only the first upload was transcribed.
    assert sample(after, jobs, result="ok") == sample(before, jobs, result="ok") + 1
    assert sample(after, "softphone_speech_requests_in_flight") == 0


async def test_an_upload_cut_off_mid_body_frees_its_place(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    never = asyncio.Event()
    async with httpx.AsyncClient(base_url=backend.url, timeout=180) as leaving:
        upload = asyncio.create_task(
            leaving.post(
                "/v1/speech",
                content=held(never),
                headers=headers(backend, "agent-a-12", "audio/wav"),
            )
        )
        await in_flight(http, backend, 1)
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
    await in_flight(http, backend, 0)
    # The same key may upload again at once (its place was given back) ...
    res = await http.post(
        "/v1/speech", content=NOT_AUDIO, headers=headers(backend, "agent-a-12", "audio/wav")
    )
    assert res.status_code == 415, res.text
    # ... and a client going away is no error of the service.
    lines = backend.log_path.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if '"level": "ERROR"' in line]
