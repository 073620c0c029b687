"""The softphone backend: the transfer service over HTTP (FastAPI).

Callers authenticate with per-user API keys (``Authorization: Bearer <key>``)
loaded from the keys file (``backend_keys_file``)::

    {"keys": {"<api key>": {"identity": "agent-alice", "role": "agent"}, ...}}

A key acts only as its own identity: an agent starts, completes and cancels
its own transfers and answers offers made to it; a caller can only mint a
caller token for itself. No LiveKit secret ever leaves the server: clients
get short-lived tokens. Errors are JSON ``{"code": ..., "message": ...}``;
the OpenAPI schema is at ``/openapi.json`` and the docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from softphone import __version__
from softphone.config import Settings, load_settings
from softphone.domain.identifiers import validate_identity
from softphone.errors import (
    ConfigError,
    LiveKitError,
    NotFoundError,
    SoftphoneError,
    SpeechError,
    TransferError,
    ValidationError,
)
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.server.transfer_orchestrator import TransferOrchestrator
from softphone.speech.pipeline import UploadGuard, http_status_for, transcribe_file
from softphone.store.history import HistoryStore

log = logging.getLogger(__name__)

PrincipalRole = Literal["agent", "caller"]
MAX_BODY_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request acts as, from its API key."""

    identity: str
    role: PrincipalRole


class KeyRing:
    """API key -> principal; compares keys in constant time, never logs them.

    Args:
        keys: Mapping of key text to principal.
    """

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys)"

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read the keys file.

        Raises:
            ConfigError: Missing, unreadable or malformed (the message never quotes a key).
        """
        if str(path) in ("", "."):
            raise ConfigError("the backend needs backend_keys_file (SOFTPHONE_BACKEND_KEYS_FILE)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON keys file") from exc
        keys: dict[str, Principal] = {}
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: expected {{'keys': {{key: {{identity, role}}}}}}")
        for n, (key, who) in enumerate(entries.items()):
            if (
                not isinstance(key, str)
                or len(key) < 16
                or not isinstance(who, dict)
                or who.get("role") not in ("agent", "caller")
                or not isinstance(who.get("identity"), str)
            ):
                raise ConfigError(
                    f"{path}: entry {n + 1} needs a key of 16+ characters, an identity "
                    "and a role (agent or caller)"
                )
            keys[key] = Principal(who["identity"], who["role"])
        return cls(keys)

    def find(self, presented: str) -> Principal | None:
        """The principal for ``presented``, or None."""
        found = None
        for key, who in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = who
        return found


class AuthError(SoftphoneError):
    """The request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = "unauthorized" if status == 401 else "forbidden"


def principal(request: Request) -> Principal:
    """The principal of a request, from its bearer API key.

    Raises:
        AuthError: No key, or an unknown one (401).
    """
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AuthError(401, "missing API key: send Authorization: Bearer <key>")
    keys: KeyRing = request.app.state.keys
    who = keys.find(presented.strip())
    if who is None:
        raise AuthError(401, "unknown API key")
    return who


Who = Annotated[Principal, Depends(principal)]


def _status(exc: SoftphoneError) -> int:
    if isinstance(exc, AuthError):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, TransferError):
        return 409
    if isinstance(exc, LiveKitError | SpeechError):
        return 503 if exc.retryable else 502
    return 500


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ValidationError("body", f"must be at most {MAX_BODY_BYTES} bytes")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValidationError("body", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValidationError("body", "must be a JSON object")
    return data


def create_app(
    *, service: TransferOrchestrator, keys: KeyRing, settings: Settings | None = None
) -> FastAPI:
    """The FastAPI app serving ``service`` to holders of ``keys``.

    The caller owns ``service`` (and closes it); see :func:`build_app` for
    an app that builds its own from settings. ``settings`` choose the speech
    providers and bounds of ``POST /v1/speech`` (defaults if not given).
    """
    app = FastAPI(
        title="softphone backend",
        version=__version__,
        description="Warm transfers, tokens, rooms and the agent directory.",
    )
    app.state.keys = keys
    _routes(app, lambda: service, settings or load_settings({}, env={}))
    return app


def _routes(
    app: FastAPI, get_service: Callable[[], TransferOrchestrator], settings: Settings
) -> None:
    @app.exception_handler(SoftphoneError)
    async def _softphone_error(request: Request, exc: SoftphoneError) -> JSONResponse:
        status = _status(exc)
        if status >= 500:
            log.error("request failed", extra={"path": request.url.path, "code": exc.code})
        return _error(status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "path"))
        return _error(400, "invalid_input", f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return _error(500, "internal_error", "internal error")

    def agent_only(who: Principal) -> None:
        if who.role != "agent":
            raise AuthError(403, "only agents may do this")

    def same(who: Principal, identity: str, what: str) -> None:
        if identity != who.identity:
            raise AuthError(403, f"this key may only act as itself ({what})")

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/transfers", status_code=201, summary="Start a transfer (the seed's route)")
    async def start(request: Request, who: Who) -> dict[str, Any]:
        agent_only(who)
        req = TransferRequest.from_dict(await _body(request))
        same(who, req.from_agent, "from_agent")
        return (await get_service().start_transfer(req)).to_dict()

    @app.get("/v1/transfers/{transfer_id}", summary="Status and timeline; long-poll")
    async def status(
        transfer_id: str, who: Who, after_version: int = 0, wait_s: float = 0.0
    ) -> dict[str, Any]:
        snap = await get_service().status(transfer_id)
        if who.identity not in (snap.caller, snap.from_agent, snap.to_agent):
            raise AuthError(403, "not a party of this transfer")
        if wait_s > 0:
            snap = await get_service().wait_for_change(
                transfer_id, after_version=after_version, timeout_s=min(wait_s, 30.0)
            )
        return snap.to_dict()

    @app.post("/v1/transfers/{transfer_id}/accept", summary="B accepts; returns B's R2 token")
    async def accept(transfer_id: str, who: Who) -> dict[str, Any]:
        agent_only(who)
        return (await get_service().accept(transfer_id, agent=who.identity)).to_dict()

    @app.post("/v1/transfers/{transfer_id}/decline", summary="B declines, with a reason")
    async def decline(transfer_id: str, request: Request, who: Who) -> dict[str, Any]:
        agent_only(who)
        reason = (await _body(request)).get("reason", "")
        if not isinstance(reason, str):
            raise ValidationError("reason", "must be text")
        snap = await get_service().decline(transfer_id, agent=who.identity, reason=reason)
        return snap.to_dict()

    @app.post("/v1/transfers/{transfer_id}/complete", summary="A hands the caller over")
    async def complete(transfer_id: str, who: Who) -> dict[str, Any]:
        agent_only(who)
        return (await get_service().complete(transfer_id, agent=who.identity)).to_dict()

    @app.post("/v1/transfers/{transfer_id}/cancel", summary="A cancels; the caller returns")
    async def cancel(transfer_id: str, who: Who) -> dict[str, Any]:
        agent_only(who)
        return (await get_service().cancel(transfer_id, agent=who.identity)).to_dict()

    @app.get("/v1/agents", summary="The agent directory (lobby)")
    async def agents(who: Who) -> list[dict[str, Any]]:
        agent_only(who)
        return [a.to_dict() for a in await get_service().list_agents()]

    @app.get("/v1/rooms", summary="Active rooms")
    async def rooms(who: Who) -> list[dict[str, Any]]:
        agent_only(who)
        return [r.to_dict() for r in await get_service().list_rooms()]

    @app.post("/v1/tokens", summary="A token for the key's own identity in one room")
    async def token(request: Request, who: Who) -> dict[str, Any]:
        body = await _body(request)
        identity = body.get("identity", who.identity)
        role = body.get("role", who.role)
        room = body.get("room")
        if not isinstance(room, str):
            raise ValidationError("room", "is required")
        if role not in ("agent", "caller"):
            raise ValidationError("role", "must be caller or agent")
        same(who, identity, "identity")
        if role != who.role:
            raise AuthError(403, f"a {who.role} key cannot obtain a {role} token")
        grant = await get_service().mint_token(identity=identity, room=room, role=role)
        return grant.to_dict()

    @app.post(
        "/v1/speech",
        summary="Transcribe and summarize an uploaded recording",
        description="Send the audio file as the raw request body (WAV, FLAC, MP3, Ogg/Opus, "
        "WebM) with its Content-Type. Answers the audio info, transcript and summary.",
    )
    async def speech(request: Request, who: Who, speaker: str = "") -> Any:
        agent_only(who)
        try:
            guard = UploadGuard.from_settings(
                settings, content_type=request.headers.get("content-type")
            )
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=".audio")
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    async for chunk in request.stream():
                        guard.add(chunk)
                        await asyncio.to_thread(out.write, chunk)
                guard.finish()
                result = await transcribe_file(
                    path, settings, speaker=validate_identity(speaker or "caller", "speaker")
                )
            finally:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        except ValidationError as exc:
            return _error(http_status_for(exc), exc.code, exc.message)
        return result.to_dict()


@contextlib.asynccontextmanager
async def build_service(settings: Settings) -> AsyncIterator[TransferOrchestrator]:
    """The orchestrator and its dependencies, built from settings, closed at the end.

    The chain of custody goes to the backend profile's history database.

    Raises:
        ConfigError: No LiveKit URL, key or secret.
    """
    from softphone.speech.factory import make_offline_summarizer, make_summarizer

    secret = settings.livekit_api_secret
    if not settings.livekit_url or not settings.livekit_api_key or secret is None:
        raise ConfigError("the backend needs LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    minter = TokenMinter(
        api_key=settings.livekit_api_key, api_secret=secret, default_ttl_s=settings.token_ttl_s
    )
    settings.ensure_dirs()
    async with (
        RoomAdmin(
            url=settings.livekit_url, api_key=settings.livekit_api_key, api_secret=secret
        ) as rooms,
        HistoryStore(settings.history_path) as history,
    ):
        service = TransferOrchestrator(
            url=settings.livekit_url,
            rooms=rooms,
            minter=minter,
            summarizer=make_summarizer(settings),
            fallback_summarizer=make_offline_summarizer(settings),
            lobby_room=settings.lobby_room,
            offer_timeout_s=settings.offer_timeout_s,
            move_timeout_s=settings.move_timeout_s,
            history=history,
        )
        async with service:
            yield service


def build_app(settings: Settings) -> FastAPI:
    """An app that builds its service from ``settings`` at startup (for uvicorn).

    Raises:
        ConfigError: The keys file is missing or malformed.
    """
    keys = KeyRing.load(settings.backend_keys_file)
    holder: dict[str, TransferOrchestrator] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with build_service(settings) as service:
            holder["service"] = service
            yield

    app = FastAPI(
        title="softphone backend",
        version=__version__,
        description="Warm transfers, tokens, rooms and the agent directory.",
        lifespan=lifespan,
    )
    app.state.keys = keys
    _routes(app, lambda: holder["service"], settings)
    return app
