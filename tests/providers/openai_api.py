"""A local server following OpenAI's published REST contract, with switchable behaviour.

Implements ``POST /v1/chat/completions`` and ``POST /v1/audio/transcriptions``
(multipart upload) as documented in OpenAI's API reference: the same paths,
request fields, response objects, status codes and error bodies
(``{"error": {"message", "type", "param", "code"}}``). Our real client code
(the ``openai`` package) talks to it over real HTTP.

Behaviour is switched per test with :meth:`FakeOpenAI.script`: each request
takes the next mode from the script, and ``ok`` once it is empty.

Modes:
    ok: a valid answer.
    slow: a valid answer after ``slow_s`` seconds.
    error: 500 with OpenAI's ``server_error`` body.
    rate_limit: 429 ``rate_limit_exceeded`` with a ``retry-after`` header.
    bad_request: 400 ``invalid_request_error``.
    auth: 401 ``invalid_api_key``.
    hang: never answers (until the server stops).
    invalid: 200, but the message content is not JSON (chat) / not our schema.
    wrong_schema: 200, JSON content that does not fit the summary card.

Use::

    with openai_server() as api:
        OpenAISummarizer(base_url=api.base_url, api_key=Secret("sk-test"), ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.providers.server import serve

MODES = (
    "ok",
    "slow",
    "error",
    "rate_limit",
    "bad_request",
    "auth",
    "hang",
    "invalid",
    "wrong_schema",
)

DEFAULT_CARD: dict[str, Any] = {
    "reason": "The caller was charged twice for order 58213.",
    "key_facts": ["Name: Maria Lopez", "Order: 58213", "Amount: $49.99"],
    "actions_taken": ["Refunded the duplicate charge."],
    "open_items": ["Refund takes 3-5 business days."],
    "sentiment": "negative",
    "next_step": "Confirm the refund arrived.",
}


@dataclass
class RecordedRequest:
    """One request the server received (for assertions)."""

    path: str
    mode: str
    authorization: str
    body: dict[str, Any] = field(default_factory=dict)
    file_bytes: int = 0
    file_name: str = ""


def _error(status: int, message: str, type_: str, code: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
    )


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], tuple[str, bytes]]:
    """Split a multipart/form-data body into its text fields and its ``file`` part."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    file_part: tuple[str, bytes] = ("", b"")
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            file_part = (str(part.get_filename()), payload)
        elif name:
            fields[str(name)] = payload.decode()
    return fields, file_part


class FakeOpenAI:
    """State and FastAPI app of the local OpenAI-compatible server.

    Args:
        api_key: The key requests must carry (``Authorization: Bearer <key>``).
    """

    def __init__(self, *, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        self.base_url = ""
        self.card: dict[str, Any] = dict(DEFAULT_CARD)
        self.transcript_text = "Hello, I am calling about my order."
        self.slow_s = 1.0
        self.retry_after_s = 1
        self.requests: list[RecordedRequest] = []
        self._script: list[str] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.app = self._make_app()

    @property
    def v1(self) -> str:
        """The base URL to give the ``openai`` client (ends in ``/v1``)."""
        return f"{self.base_url}/v1"

    def script(self, *modes: str) -> None:
        """Answer the next requests with ``modes`` in order, then ``ok``."""
        for m in modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}")
        with self._lock:
            self._script = list(modes)

    def always(self, mode: str, n: int = 50) -> None:
        """Answer the next ``n`` requests with ``mode``."""
        self.script(*([mode] * n))

    def _next_mode(self) -> str:
        with self._lock:
            return self._script.pop(0) if self._script else "ok"

    def _auth_ok(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.api_key}"

    async def _common(self, request: Request, mode: str) -> Response | None:
        """The answer for modes that do not depend on the endpoint, or None."""
        if not self._auth_ok(request) or mode == "auth":
            return _error(
                401,
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if mode == "error":
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if mode == "rate_limit":
            resp = _error(
                429,
                "Rate limit reached for requests. Please try again in 1s.",
                "requests",
                "rate_limit_exceeded",
            )
            resp.headers["retry-after"] = str(self.retry_after_s)
            return resp
        if mode == "bad_request":
            return _error(
                400, "Invalid value for 'model'.", "invalid_request_error", "invalid_value"
            )
        if mode == "hang":
            # Never answers while the server runs; released when it stops, so
            # shutdown does not have to cut the connection.
            while not self.stopping.is_set():
                await asyncio.sleep(0.05)
            return Response(status_code=503)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        return None

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            mode = self._next_mode()
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError:
                body = {}
            self.requests.append(
                RecordedRequest(
                    "/v1/chat/completions", mode, request.headers.get("authorization", ""), body
                )
            )
            early = await self._common(request, mode)
            if early is not None:
                return early
            if not isinstance(body.get("messages"), list) or not body.get("model"):
                return _error(
                    400,
                    "you must provide a model parameter and a messages array",
                    "invalid_request_error",
                    None,
                )
            if mode == "invalid":
                content = "Sure! Here is a summary of the call: the caller was unhappy."
            elif mode == "wrong_schema":
                content = json.dumps({"reason": 42, "key_facts": "not a list"})
            else:
                content = json.dumps(self.card)
            return JSONResponse(
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
                }
            )

        @app.post("/v1/audio/transcriptions")
        async def transcriptions(request: Request) -> Response:
            mode = self._next_mode()
            raw = await request.body()
            fields, (fname, data) = _parse_multipart(request.headers.get("content-type", ""), raw)
            self.requests.append(
                RecordedRequest(
                    "/v1/audio/transcriptions",
                    mode,
                    request.headers.get("authorization", ""),
                    dict(fields),
                    len(data),
                    fname,
                )
            )
            early = await self._common(request, mode)
            if early is not None:
                return early
            if not data or not fields.get("model"):
                return _error(
                    400,
                    "Could not parse multipart form: file and model are required",
                    "invalid_request_error",
                    None,
                )
            fmt = fields.get("response_format", "json")
            if mode in ("invalid", "wrong_schema"):
                return PlainTextResponse("<html>bad gateway</html>", media_type="application/json")
            text = self.transcript_text
            if fmt == "text":
                return PlainTextResponse(text)
            if fmt == "verbose_json":
                words = text.split()
                dur = max(1.0, len(words) * 0.4)
                return JSONResponse(
                    {
                        "task": "transcribe",
                        "language": "english",
                        "duration": dur,
                        "text": text,
                        "segments": [
                            {
                                "id": 0,
                                "seek": 0,
                                "start": 0.0,
                                "end": dur,
                                "text": " " + text,
                                "tokens": [],
                                "temperature": 0.0,
                                "avg_logprob": -0.2,
                                "compression_ratio": 1.2,
                                "no_speech_prob": 0.01,
                            }
                        ],
                    }
                )
            return JSONResponse({"text": text})

        return app


@contextlib.contextmanager
def openai_server(*, api_key: str = "sk-test") -> Iterator[FakeOpenAI]:
    """Run a :class:`FakeOpenAI` under uvicorn on a free loopback port."""
    fake = FakeOpenAI(api_key=api_key)
    with serve(fake.app) as url:
        fake.base_url = url
        try:
            yield fake
        finally:
            fake.stopping.set()
