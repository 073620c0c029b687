"""The backend's speech route: an uploaded recording in, transcript and summary out.

The backend under uvicorn runs the real pipeline (faster-whisper on the bundled
model, offline summarizer); speech is made with espeak-ng.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.transfer.conftest import TransferEnv

pytestmark = pytest.mark.integration

SPEECH = "Hello, my order number is one two three four five and it arrived broken."


async def test_upload_is_transcribed_and_summarized(
    backend_env: TransferEnv, tmp_path: Path
) -> None:
    backend = backend_env.backend
    assert backend is not None
    wav = tmp_path / "call.wav"
    proc = await asyncio.create_subprocess_exec("espeak-ng", "-w", str(wav), SPEECH)
    assert await proc.wait() == 0
    agent_key = backend.keys["agent-a-399"]
    caller_key = backend.keys["caller-399"]
    async with httpx.AsyncClient(base_url=backend.url, timeout=120) as http:
        res = await http.post(
            "/v1/speech",
            params={"speaker": "caller-399"},
            content=wav.read_bytes(),
            headers={"Authorization": f"Bearer {agent_key}", "Content-Type": "audio/wav"},
        )
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["audio"]["format"] == "wav"
        assert "order" in body["transcript"]["text"].lower()
        assert {s["speaker"] for s in body["transcript"]["segments"]} == {"caller-399"}
        assert body["summary"]["reason"]
        # Not audio: refused with the pipeline's status and a JSON error.
        res = await http.post(
            "/v1/speech",
            content=b"this is not audio at all, just some text",
            headers={"Authorization": f"Bearer {agent_key}", "Content-Type": "audio/wav"},
        )
        assert res.status_code == 415 and res.json()["code"] == "invalid_input"
        res = await http.post(
            "/v1/speech",
            content=b"",
            headers={"Authorization": f"Bearer {agent_key}", "Content-Type": "text/html"},
        )
        assert res.status_code == 415
        res = await http.post(
            "/v1/speech",
            content=wav.read_bytes(),
            headers={"Authorization": f"Bearer {caller_key}", "Content-Type": "audio/wav"},
        )
        assert res.status_code == 403
