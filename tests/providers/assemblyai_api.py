"""A local server following AssemblyAI's published v2 REST contract, with switchable behaviour.

Endpoints as in AssemblyAI's API reference:

- ``POST /v2/upload``: raw audio body -> ``{"upload_url": ...}``;
- ``POST /v2/transcript``: ``{"audio_url", "speaker_labels", ...}`` ->
  the transcript object with ``id`` and ``status: "queued"``;
- ``GET /v2/transcript/{id}``: the transcript object; ``status`` goes
  ``queued`` -> ``processing`` -> ``completed`` (with ``text``, ``words``,
  ``utterances`` labelled ``A``/``B``, times in ms, ``audio_duration`` in s)
  or ``error`` (with ``error``).

Every request needs ``authorization: <key>``; errors are ``{"error": "..."}``
with 400/401/404/429/5xx statuses.

Behaviour per endpoint is scripted with :meth:`FakeAssemblyAI.script`:
``ok``, ``slow``, ``error`` (500), ``rate_limit`` (429 + ``retry-after``),
``bad_request`` (400), ``auth`` (401), ``hang``, ``invalid`` (200, not JSON)
and, for polling only, ``api_error`` (``status: "error"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.providers.server import serve

MODES = ("ok", "slow", "error", "rate_limit", "bad_request", "auth", "hang", "invalid", "api_error")
ENDPOINTS = ("upload", "transcript", "poll")


@dataclass
class Job:
    """A transcript job on the fake server."""

    id: str
    audio_url: str
    speaker_labels: bool
    polls: int = 0
    request: dict[str, Any] = field(default_factory=dict)


class FakeAssemblyAI:
    """State and FastAPI app of the local AssemblyAI-compatible server.

    Args:
        api_key: The key requests must carry in ``authorization``.
        polls_until_done: How many polls answer ``queued``/``processing`` first.
    """

    def __init__(self, *, api_key: str = "aai-test", polls_until_done: int = 2) -> None:
        self.api_key = api_key
        self.base_url = ""
        self.polls_until_done = polls_until_done
        self.utterances: list[dict[str, Any]] = [
            {
                "speaker": "A",
                "text": "Thank you for calling, how can I help?",
                "start": 500,
                "end": 2600,
            },
            {
                "speaker": "B",
                "text": "I was charged twice for order 58213.",
                "start": 3100,
                "end": 5600,
            },
        ]
        self.slow_s = 1.0
        self.retry_after_s = 1
        self.uploads: dict[str, int] = {}  # upload id -> bytes received
        self.upload_chunks: list[int] = []  # sizes of body chunks as they arrived
        self.jobs: dict[str, Job] = {}
        self.hits: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self._scripts: dict[str, list[str]] = {e: [] for e in ENDPOINTS}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.app = self._make_app()

    def script(self, endpoint: str, *modes: str) -> None:
        """Answer the next requests to ``endpoint`` (upload, transcript, poll) with ``modes``."""
        if endpoint not in ENDPOINTS or any(m not in MODES for m in modes):
            raise ValueError("unknown endpoint or mode")
        with self._lock:
            self._scripts[endpoint] = list(modes)

    def _next(self, endpoint: str) -> str:
        with self._lock:
            self.hits[endpoint] += 1
            s = self._scripts[endpoint]
            return s.pop(0) if s else "ok"

    async def _common(self, request: Request, mode: str) -> Response | None:
        if request.headers.get("authorization") != self.api_key or mode == "auth":
            return JSONResponse({"error": "Authentication error, API token missing/invalid"}, 401)
        if mode == "error":
            return JSONResponse({"error": "Internal server error"}, 500)
        if mode == "rate_limit":
            return JSONResponse(
                {"error": "Too many requests"},
                429,
                headers={"retry-after": str(self.retry_after_s)},
            )
        if mode == "bad_request":
            return JSONResponse({"error": "Invalid request: audio_url is required"}, 400)
        if mode == "invalid":
            return PlainTextResponse("<html>502 Bad Gateway</html>", 200)
        if mode == "hang":
            # Never answers while the server runs; released when it stops, so
            # shutdown does not have to cut the connection.
            while not self.stopping.is_set():
                await asyncio.sleep(0.05)
            return Response(status_code=503)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        return None

    def _transcript_body(self, job: Job, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "audio_url": job.audio_url,
            "speaker_labels": job.speaker_labels,
            "language_code": job.request.get("language_code", "en_us"),
            "text": None,
            "words": None,
            "utterances": None,
            "audio_duration": None,
            "error": None,
        }
        if status == "completed":
            words = [
                {
                    "text": w,
                    "start": u["start"] + i * 200,
                    "end": u["start"] + i * 200 + 180,
                    "confidence": 0.95,
                    "speaker": u["speaker"] if job.speaker_labels else None,
                }
                for u in self.utterances
                for i, w in enumerate(u["text"].split())
            ]
            body.update(
                text=" ".join(u["text"] for u in self.utterances),
                words=words,
                utterances=[
                    {
                        **u,
                        "confidence": 0.95,
                        "words": [w for w in words if w["speaker"] == u["speaker"]],
                    }
                    for u in self.utterances
                ]
                if job.speaker_labels
                else None,
                audio_duration=(self.utterances[-1]["end"] / 1000) if self.utterances else 0,
            )
        if status == "error":
            body["error"] = "Transcoding failed. File does not appear to contain audio."
        return body

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v2/upload")
        async def upload(request: Request) -> Response:
            mode = self._next("upload")
            early = await self._common(request, mode)
            if early is not None:
                return early
            size = 0
            async for chunk in request.stream():
                self.upload_chunks.append(len(chunk))
                size += len(chunk)
            if size == 0:
                return JSONResponse({"error": "Request body is empty"}, 400)
            uid = uuid.uuid4().hex
            self.uploads[uid] = size
            return JSONResponse({"upload_url": f"https://cdn.assemblyai.com/upload/{uid}"})

        @app.post("/v2/transcript")
        async def transcript(request: Request) -> Response:
            mode = self._next("transcript")
            early = await self._common(request, mode)
            if early is not None:
                return early
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "Invalid JSON body"}, 400)
            url = body.get("audio_url") if isinstance(body, dict) else None
            if not isinstance(url, str) or not url:
                return JSONResponse({"error": "Invalid request: audio_url is required"}, 400)
            job = Job(uuid.uuid4().hex, url, bool(body.get("speaker_labels")), request=body)
            self.jobs[job.id] = job
            return JSONResponse(self._transcript_body(job, "queued"))

        @app.get("/v2/transcript/{tid}")
        async def poll(tid: str, request: Request) -> Response:
            mode = self._next("poll")
            if mode != "api_error":
                early = await self._common(request, mode)
                if early is not None:
                    return early
            job = self.jobs.get(tid)
            if job is None:
                return JSONResponse({"error": "Transcript not found"}, 404)
            job.polls += 1
            if mode == "api_error":
                return JSONResponse(self._transcript_body(job, "error"))
            uid = job.audio_url.rsplit("/", 1)[-1]
            if uid not in self.uploads:
                return JSONResponse(self._transcript_body(job, "error"))
            status = "completed" if job.polls > self.polls_until_done else "processing"
            return JSONResponse(self._transcript_body(job, status))

        return app


@contextlib.contextmanager
def assemblyai_server(
    *, api_key: str = "aai-test", polls_until_done: int = 2
) -> Iterator[FakeAssemblyAI]:
    """Run a :class:`FakeAssemblyAI` under uvicorn on a free loopback port."""
    fake = FakeAssemblyAI(api_key=api_key, polls_until_done=polls_until_done)
    with serve(fake.app) as url:
        fake.base_url = url
        try:
            yield fake
        finally:
            fake.stopping.set()
