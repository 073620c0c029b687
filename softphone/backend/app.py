"""The softphone backend: the transfer service and the call registry over HTTP (FastAPI).

Callers authenticate with per-user API keys (``Authorization: Bearer <key>``)
loaded from the keys file (``backend_keys_file``)::

    {"keys": {"<api key>": {"identity": "agent-alice", "role": "agent"}, ...}}

Roles: ``agent``, ``caller``, ``supervisor`` and ``service`` (an integrator
such as the phone gateway). A key acts only as its own identity: an agent
starts, completes and cancels its own transfers and answers offers made to
it; a caller creates its own call and mints tokens for itself; a service
creates calls for anyone. No LiveKit secret ever leaves the server: clients
get short-lived tokens for the rooms they are parties of.

Every body is a model of :mod:`softphone.http_models` (validated, and
documented in the OpenAPI schema at ``/openapi.json``, docs at ``/docs``).
Errors are JSON ``{"code": ..., "message": ...}``; bad input is a 400 (never
a 422, which only ``/v1/speech`` uses, for audio it cannot take), and a
client error is never a 5xx. Before any route runs, :class:`BodyGuard`
bounds the body (size, JSON nesting depth, digits of a number), so a hostile
body is refused before the JSON parser sees it.

Operations: every request gets a request id (``X-Request-ID``, taken from the
client when sane) that every log line written for it carries
(:class:`RequestContext`); ``GET /health`` is liveness, ``GET /ready``
readiness (:mod:`~softphone.backend.readiness`: 503 naming the dependency
that failed); ``GET /metrics`` is Prometheus' text format for supervisor and
service keys (:mod:`~softphone.backend.metrics`). ``POST /v1/speech`` is
bounded per key, by a worker pool and by the audio's real length
(:mod:`~softphone.backend.speech_limits`): 429 and 503 carry ``Retry-After``,
and decoding and STT run in worker processes, never on the request loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import Body, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from softphone import __version__
from softphone.backend.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from softphone.backend.metrics import ServiceMetrics
from softphone.backend.readiness import CheckState, Readiness
from softphone.backend.records_api import records_router
from softphone.backend.speech_limits import SpeechLimits, SpeechRefused, SpeechWork
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
from softphone.http_models import (
    ID_PATTERN,
    IDENTITY_PATTERN,
    MAX_BODY_BYTES,
    MAX_ID,
    MAX_JSON_DEPTH,
    MAX_NUMBER_DIGITS,
    AgentOut,
    CallOut,
    CallRequestBody,
    CallTicketOut,
    DeclineBody,
    ErrorBody,
    HealthBody,
    ResponseBody,
    RoomOut,
    ServiceInfoOut,
    SpeechOut,
    TokenOut,
    TokenRequestBody,
    TransferOut,
    TransferRequestBody,
    TransferTicketOut,
    validation_message,
)
from softphone.logs import REQUEST_ID_HEADER, new_request_id, request_id
from softphone.protocol import TokenRoleName, TransferService
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.server.transfer_orchestrator import TransferOrchestrator
from softphone.speech.pipeline import CONTENT_TYPES, UploadGuard, http_status_for
from softphone.store.history import HistoryStore
from softphone.store.records import PostgresRecords

log = logging.getLogger(__name__)

PrincipalRole = Literal["agent", "caller", "supervisor", "service"]
ROLES: tuple[PrincipalRole, ...] = get_args(PrincipalRole)
# Routes whose body is not JSON: they stream it and bound it themselves.
STREAMING_PATHS = frozenset({"/v1/speech"})
# A declared body this much larger than the bound closes the connection
# instead of being read and dropped.
_DRAIN_LIMIT = 4 * MAX_BODY_BYTES
MAX_WAIT_S = 30.0
# How long shutdown waits for the summarizer's worker process (a summary under way).
STOP_WORKER_S = 10.0


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
        # Encoded once: every request compares against all of them, on the event loop.
        self._keys = {key.encode(): who for key, who in keys.items()}
        self._roles: dict[str, set[str]] = {}
        for who in self._keys.values():
            self._roles.setdefault(who.identity, set()).add(who.role)

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
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable JSON keys file") from exc
        keys: dict[str, Principal] = {}
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: expected {{'keys': {{key: {{identity, role}}}}}}")
        for n, (key, who) in enumerate(entries.items()):
            identity = who.get("identity") if isinstance(who, dict) else None
            try:
                validate_identity(identity)
                ok = isinstance(who, dict) and who.get("role") in ROLES
            except ValidationError:
                ok = False
            if not isinstance(key, str) or len(key) < 16 or not ok:
                raise ConfigError(
                    f"{path}: entry {n + 1} needs a key of 16+ characters, a valid identity "
                    f"and a role ({', '.join(ROLES)})"
                )
            keys[key] = Principal(who["identity"], who["role"])
        return cls(keys)

    def find(self, presented: str) -> Principal | None:
        """The principal for ``presented``, or None."""
        found = None
        given = presented.encode()
        for key, who in self._keys.items():
            if hmac.compare_digest(key, given):
                found = who
        return found

    def roles_of(self, identity: str) -> set[str]:
        """The roles keys of ``identity`` have (empty for an identity without a key)."""
        return set(self._roles.get(identity, ()))


class AuthError(SoftphoneError):
    """The request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = "unauthorized" if status == 401 else "forbidden"


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="The user's API key from the keys file: `Authorization: Bearer <key>`.",
)


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of a request, from its bearer API key.

    A coroutine although it awaits nothing: FastAPI runs a plain function
    dependency in its thread pool, and every request of every route goes
    through this one. With 25 completes at once beside the long polls and
    webhooks, those hand-offs queued behind the GIL: 0.6 s from a request's
    arrival to its route's first line (``bench/scale.py``, n = 25).

    Raises:
        AuthError: No key, or an unknown one (401).
    """
    if credentials is None or not credentials.credentials.strip():
        raise AuthError(401, "missing API key: send Authorization: Bearer <key>")
    keys: KeyRing = request.app.state.keys
    who = keys.find(credentials.credentials.strip())
    if who is None:
        raise AuthError(401, "unknown API key")
    return who


Who = Annotated[Principal, Depends(principal)]


def _status(exc: SoftphoneError) -> int:
    if isinstance(exc, AuthError | SpeechRefused):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, TransferError):
        return 409
    if isinstance(exc, LiveKitError | SpeechError):
        return 503 if exc.retryable else 502
    if isinstance(exc, ConfigError):
        return 503
    return 500


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


# --- request context ----------------------------------------------------------------------

# Probes and scrapes: logged at DEBUG, not once a second at INFO.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
_INTERNAL_ERROR = json.dumps({"code": "internal_error", "message": "internal error"}).encode()
# Metric labels take values from fixed sets: a client may send any method name.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContext:
    """Pure ASGI middleware: a request id, an access log line and a timing per HTTP request.

    The id is the client's ``X-Request-ID`` when it is sane (1-64 of
    ``A-Za-z0-9._:-``), else a new one; it is answered in ``X-Request-ID``
    and set in :data:`softphone.logs.request_id`, so every line logged while
    the request is handled carries it. uvicorn runs each request in a task
    of its own, whose context dies with it. An exception no handler took is
    logged here (with the id) and answered as a 500 ``internal_error``.

    Args:
        app: The application.
        metrics: Where request timings go (method, route template, status).
    """

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        request_id.set(rid)
        started = time.monotonic()
        status = 500
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error", extra={"path": scope["path"][:200]})
            if answered:
                raise
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_INTERNAL_ERROR)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _INTERNAL_ERROR})
        finally:
            elapsed = time.monotonic() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            if self.metrics is not None:
                self.metrics.http_seconds.labels(method, route, str(status)).observe(elapsed)
            log.log(
                logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO,
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                },
            )


# --- body guard -------------------------------------------------------------------------

_JSON_TOKENS = re.compile(
    # A string (to its closing quote, or to the end if it has none), a bracket,
    # or a run of too many digits. Possessive quantifiers: no backtracking, O(n).
    r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]|[0-9]{' + str(MAX_NUMBER_DIGITS + 1) + ",}",
    re.DOTALL,
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_json_body(raw: bytes, content_type: str | None) -> str | None:
    """Why a JSON request body is refused (a ``"body: ..."`` message), or None if it is fine.

    Checks, in O(n) and before parsing: UTF-8, nesting depth
    (:data:`MAX_JSON_DEPTH`), numbers of more than :data:`MAX_NUMBER_DIGITS`
    digits (Python's int parsing refuses 4300 and more with a ValueError), then
    that it parses (without ``NaN``/``Infinity``) to a JSON object.
    """
    base = (content_type or "").split(";")[0].strip().lower()
    if base != "application/json" and not (
        base.startswith("application/") and base.endswith("+json")
    ):
        return "body: send JSON with Content-Type: application/json"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "body: is not UTF-8"
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        first = match.group()[0]
        if first == '"':
            continue
        if first in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        elif first in "]}":
            depth -= 1
        else:
            return f"body: a number has more than {MAX_NUMBER_DIGITS} digits"
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return "body: is not valid JSON"
    if not isinstance(data, dict):
        return "body: must be a JSON object"
    return None


class BodyGuard:
    """Pure ASGI middleware: bounds and checks JSON request bodies before any route parses them.

    A body over ``max_bytes`` is a 413 ``too_large`` (refused from its
    ``Content-Length`` without reading it, else as soon as it grows past the
    bound); a body that is not a JSON object within the bounds of
    :func:`check_json_body` is a 400 ``invalid_input``. A good body is handed
    on unchanged. ``streaming_paths`` (the speech upload) pass untouched: they
    stream their body and bound it themselves. The connection stays usable
    after a refusal (the server drops the unread rest of the body), except
    after a declared body far over the bound, where it is closed.

    Args:
        app: The application.
        max_bytes: The largest body accepted.
        streaming_paths: Paths whose bodies are not JSON.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = MAX_BODY_BYTES,
        streaming_paths: frozenset[str] = STREAMING_PATHS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streaming_paths = streaming_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streaming_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 15:
                await self._refuse(send, 400, "invalid_input", "body: bad Content-Length")
                return
            if int(declared) > self.max_bytes:
                await self._too_large(send, close=int(declared) > _DRAIN_LIMIT)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, close=False)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw:
            problem = check_json_body(raw, headers.get("content-type"))
            if problem is not None:
                await self._refuse(send, 400, "invalid_input", problem)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, *, close: bool) -> None:
        await self._refuse(
            send,
            413,
            "too_large",
            f"body: must be at most {self.max_bytes} bytes",
            close=close,
        )

    @staticmethod
    async def _refuse(
        send: Send, status: int, code: str, message: str, *, close: bool = False
    ) -> None:
        body = json.dumps({"code": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --- the app ----------------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "Bad input: malformed or non-JSON body, a bad field (`invalid_input`)",
    401: "No API key, or an unknown one (`unauthorized`)",
    403: "The key may not do this (`forbidden`)",
    404: "No such transfer, call, room or identity, or not a party of it (`not_found`)",
    409: "The protocol refuses the step now (`transfer_error`)",
    413: "The body is too large (`too_large`; for /v1/speech `invalid_input`)",
    408: "The upload did not arrive in time (`timeout`)",
    415: "Not a supported audio type (`invalid_input`)",
    422: "Audio that cannot be used, e.g. too long (`invalid_input`)",
    429: "Too many requests of this key at once or per minute (`rate_limited`); see Retry-After",
    502: "LiveKit or a provider failed (`livekit_error`, `speech_error`)",
    503: "LiveKit or a provider is unavailable or not configured, or the service is at "
    "capacity (`busy`, with Retry-After); retry later",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``codes``, plus those every /v1 route can answer."""
    every = (400, 401, 413, 502, 503)
    return {
        c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]}
        for c in sorted(set(codes) | set(every))
    }


TransferId = Annotated[
    str, PathParam(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="Transfer id")
]
CallId = Annotated[
    str, PathParam(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="Call id")
]


class ReadyOut(ResponseBody):
    """``GET /ready``: whether every readiness check passed, and each one's state."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, CheckState]


def _new_app(lifespan: Any = None, metrics: ServiceMetrics | None = None) -> FastAPI:
    app = FastAPI(
        title="softphone backend",
        version=__version__,
        description="Warm transfers, calls, tokens, rooms and the agent directory. "
        "Errors are `{code, message}`; bad input is a 400.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyGuard)
    # Added last: outermost, so even the body guard's refusals carry the request id.
    app.add_middleware(RequestContext, metrics=metrics)

    def openapi() -> dict[str, Any]:
        # FastAPI documents a 422 for every route with parameters; ours answer
        # 400 instead (the handler below), so only the 422s we declare stay.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    answer = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in json.dumps(answer):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app(
    *,
    service: TransferService,
    keys: KeyRing,
    settings: Settings | None = None,
    speech_limits: SpeechLimits | None = None,
    readiness: Readiness | None = None,
) -> FastAPI:
    """The FastAPI app serving ``service`` to holders of ``keys``.

    The caller owns ``service`` (and closes it); see :func:`build_app` for
    an app that builds its own from settings. ``settings`` choose the speech
    providers and bounds of ``POST /v1/speech`` (defaults if not given),
    ``speech_limits`` how much speech work is taken on, ``readiness`` what
    ``GET /ready`` checks (nothing if not given). The speech workers start
    with the first upload and stop with the app's lifespan.
    """
    settings = settings or load_settings({}, env={})
    metrics = ServiceMetrics()
    metrics.watch(service)
    work = SpeechWork(
        limits=speech_limits or SpeechLimits(),
        settings=settings,
        metrics=metrics,
        log_level=settings.log_level,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with work:
            yield

    app = _new_app(lifespan, metrics)
    app.state.keys = keys
    _routes(
        app,
        lambda: service,
        settings,
        work=work,
        metrics=metrics,
        readiness=readiness or Readiness(),
    )
    return app


def _routes(
    app: FastAPI,
    get_service: Callable[[], TransferService],
    settings: Settings,
    *,
    work: SpeechWork,
    metrics: ServiceMetrics,
    readiness: Readiness,
) -> None:
    keys: KeyRing = app.state.keys

    @app.exception_handler(SoftphoneError)
    async def _softphone_error(request: Request, exc: SoftphoneError) -> JSONResponse:
        status = _status(exc)
        headers = None
        if isinstance(exc, SpeechRefused):
            # Load shedding works as meant: no error in the log.
            log.info("speech request refused", extra={"reason": exc.reason, "status": status})
            if exc.retry_after_s is not None:
                headers = {"Retry-After": str(exc.retry_after_s)}
        elif status >= 500:
            log.error("request failed", extra={"path": request.url.path, "code": exc.code})
        return _error(status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "invalid_input", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "invalid_input",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    def only(who: Principal, *roles: PrincipalRole) -> None:
        if who.role not in roles:
            raise AuthError(403, f"a {who.role} key cannot do this (only {', '.join(roles)})")

    def same(who: Principal, identity: str, what: str) -> None:
        if identity != who.identity:
            raise AuthError(403, f"this key may only act as itself ({what})")

    def not_a(identity: str, field: str, *roles: str) -> None:
        """Refuse an identity whose keys have one of ``roles`` (e.g. an agent as the caller)."""
        if keys.roles_of(identity) & set(roles):
            raise ValidationError(field, f"must not be a {'/'.join(sorted(roles))} identity")

    @app.get("/health", summary="Liveness", response_model=HealthBody)
    async def health() -> HealthBody:
        return HealthBody(status="ok")

    @app.get(
        "/ready",
        summary="Readiness: 200 when every dependency answers, else 503 naming the failed ones",
        description="No key needed. The checks (LiveKit's server API; later Redis and "
        "PostgreSQL) are named, never described: nothing about the deployment leaks.",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "A dependency is not usable"}},
    )
    async def ready() -> JSONResponse:
        states = await readiness.check()
        ok = Readiness.ready(states)
        body = ReadyOut(status="ready" if ok else "unavailable", checks=states)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (supervisor and service keys only)",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_errors(403),
        },
    )
    async def metrics_text(who: Who) -> Response:
        only(who, "supervisor", "service")
        return Response(await metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # --- transfers ------------------------------------------------------------------

    @app.post(
        "/v1/transfers",
        status_code=201,
        summary="Start a transfer (the seed's route)",
        response_model=TransferTicketOut,
        responses=_errors(403, 404, 409),
    )
    async def start(body: TransferRequestBody, who: Who) -> TransferTicketOut:
        only(who, "agent")
        same(who, body.from_agent, "from_agent")
        ticket = await get_service().start_transfer(body.to_domain())
        return TransferTicketOut.from_domain(ticket)

    @app.get(
        "/v1/transfers/{transfer_id}",
        summary="Status and timeline; long-poll",
        description="With `wait_s` > 0, answers once the transfer's version exceeds "
        f"`after_version`, or after `wait_s` (at most {MAX_WAIT_S:g} s are waited).",
        response_model=TransferOut,
        responses=_errors(403, 404),
    )
    async def status(
        transfer_id: TransferId,
        who: Who,
        after_version: Annotated[int, Query(ge=0, le=2**53)] = 0,
        wait_s: Annotated[float, Query(ge=0.0, le=3600.0, allow_inf_nan=False)] = 0.0,
    ) -> TransferOut:
        snap = await get_service().status(transfer_id)
        if who.identity not in (snap.caller, snap.from_agent, snap.to_agent):
            raise AuthError(403, "not a party of this transfer")
        if wait_s > 0:
            snap = await get_service().wait_for_change(
                transfer_id, after_version=after_version, timeout_s=min(wait_s, MAX_WAIT_S)
            )
        return TransferOut.from_domain(snap)

    @app.post(
        "/v1/transfers/{transfer_id}/accept",
        summary="B accepts; returns B's R2 token",
        response_model=TokenOut,
        responses=_errors(403, 404, 409),
    )
    async def accept(transfer_id: TransferId, who: Who) -> TokenOut:
        only(who, "agent")
        return TokenOut.from_domain(await get_service().accept(transfer_id, agent=who.identity))

    @app.post(
        "/v1/transfers/{transfer_id}/decline",
        summary="B declines, with a reason",
        response_model=TransferOut,
        responses=_errors(403, 404, 409),
    )
    async def decline(
        transfer_id: TransferId,
        who: Who,
        body: Annotated[DeclineBody | None, Body()] = None,
    ) -> TransferOut:
        only(who, "agent")
        reason = body.reason if body else ""
        snap = await get_service().decline(transfer_id, agent=who.identity, reason=reason)
        return TransferOut.from_domain(snap)

    @app.post(
        "/v1/transfers/{transfer_id}/complete",
        summary="A hands the caller over",
        response_model=TransferOut,
        responses=_errors(403, 404, 409),
    )
    async def complete(transfer_id: TransferId, who: Who) -> TransferOut:
        only(who, "agent")
        snap = await get_service().complete(transfer_id, agent=who.identity)
        return TransferOut.from_domain(snap)

    @app.post(
        "/v1/transfers/{transfer_id}/cancel",
        summary="A cancels; the caller returns",
        response_model=TransferOut,
        responses=_errors(403, 404, 409),
    )
    async def cancel(transfer_id: TransferId, who: Who) -> TransferOut:
        only(who, "agent")
        snap = await get_service().cancel(transfer_id, agent=who.identity)
        return TransferOut.from_domain(snap)

    # --- calls ----------------------------------------------------------------------

    @app.post(
        "/v1/calls",
        status_code=201,
        summary="Create a call; answers the call and the requester's token for its room",
        description="A caller key creates a call for itself (`caller` defaults to its "
        "identity); an agent key for a caller, taken by itself or another agent; a service "
        "key for anyone. Supervisor keys cannot create calls.",
        response_model=CallTicketOut,
        responses=_errors(403, 404, 409),
    )
    async def create_call(body: CallRequestBody, who: Who) -> CallTicketOut:
        only(who, "caller", "agent", "service")
        if who.role == "caller":
            caller = body.caller or who.identity
            same(who, caller, "caller")
        elif body.caller is None:
            raise ValidationError("caller", f"is required with a {who.role} key")
        else:
            caller = body.caller
        not_a(caller, "caller", "agent", "supervisor", "service")
        not_a(body.agent, "agent", "caller", "supervisor", "service")
        ticket = await get_service().create_call(
            caller=caller, agent=body.agent, requester=who.identity
        )
        return CallTicketOut.from_domain(ticket)

    @app.get(
        "/v1/calls",
        summary="Active calls this key may see (its own; every call for a supervisor)",
        response_model=list[CallOut],
        responses=_errors(403),
    )
    async def list_calls(who: Who) -> list[CallOut]:
        only(who, "caller", "agent", "supervisor")
        role: TokenRoleName = who.role  # type: ignore[assignment]  # service was refused
        calls = await get_service().list_calls(identity=who.identity, role=role)
        return [CallOut.from_domain(c) for c in calls]

    @app.post(
        "/v1/calls/{call_id}/end",
        summary="A party hangs up for everyone: the call ends and its rooms close",
        response_model=CallOut,
        responses=_errors(404),
    )
    async def end_call(call_id: CallId, who: Who) -> CallOut:
        return CallOut.from_domain(await get_service().end_call(call_id, identity=who.identity))

    @app.get(
        "/v1/service",
        summary="The LiveKit URL and command key the apps trust",
        response_model=ServiceInfoOut,
        responses=_errors(),
    )
    async def service_info(who: Who) -> ServiceInfoOut:
        return ServiceInfoOut.from_domain(await get_service().service_info())

    # --- directory, rooms, tokens ---------------------------------------------------

    @app.get(
        "/v1/agents",
        summary="The agent directory (lobby)",
        response_model=list[AgentOut],
        responses=_errors(403),
    )
    async def agents(who: Who) -> list[AgentOut]:
        only(who, "agent", "supervisor", "service")
        return [AgentOut.from_domain(a) for a in await get_service().list_agents()]

    @app.get(
        "/v1/rooms",
        summary="Active rooms (supervisors only; agents use GET /v1/calls)",
        response_model=list[RoomOut],
        responses=_errors(403),
    )
    async def rooms(who: Who) -> list[RoomOut]:
        only(who, "supervisor")
        return [RoomOut.from_domain(r) for r in await get_service().list_rooms()]

    @app.post(
        "/v1/tokens",
        summary="A token for the key's own identity and role in a room it is a party of",
        description="`identity` and `role` default to the key's and may only be the key's; "
        "`supervisor_mode` (listen, whisper, barge) only with role supervisor. A room the "
        "identity is no party of is a 404, whether or not it exists.",
        response_model=TokenOut,
        responses=_errors(403, 404),
    )
    async def token(body: TokenRequestBody, who: Who) -> TokenOut:
        if who.role == "service":
            raise AuthError(403, "a service key cannot obtain tokens")
        identity = body.identity or who.identity
        same(who, identity, "identity")
        role = body.role or who.role
        if role != who.role:
            raise AuthError(403, f"a {who.role} key cannot obtain a {role} token")
        if body.supervisor_mode is not None and role != "supervisor":
            raise ValidationError("supervisor_mode", "only with role supervisor")
        grant = await get_service().mint_token(
            identity=identity,
            room=body.room,
            role=role,
            supervisor_mode=body.supervisor_mode or "listen",
        )
        return TokenOut.from_domain(grant)

    # --- speech ---------------------------------------------------------------------

    audio_body = {"schema": {"type": "string", "format": "binary"}}

    @app.post(
        "/v1/speech",
        summary="Transcribe and summarize an uploaded recording",
        description="Send the audio file as the raw request body (WAV, FLAC, MP3, Ogg/Opus, "
        "WebM) with its Content-Type. Answers the audio info, transcript and summary. "
        "Refusals: 400 (bad `speaker`, empty or corrupt file), 413 (over the upload bound), "
        "415 (not a supported type or format), 422 (audio too long, whatever its header "
        "says), all `invalid_input`; 408 (the upload took too long); 429 (this key's "
        "concurrency or rate, `rate_limited`) and 503 (the service is at capacity, `busy`), "
        "both with Retry-After.",
        response_model=SpeechOut,
        responses={
            **_errors(403, 408, 415, 422, 429),
            429: {"model": ErrorBody, "description": _DESCRIPTIONS[429], "headers": _RETRY_AFTER},
            503: {"model": ErrorBody, "description": _DESCRIPTIONS[503], "headers": _RETRY_AFTER},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {t: audio_body for t in sorted(CONTENT_TYPES)},
            }
        },
    )
    async def speech(
        request: Request,
        who: Who,
        speaker: Annotated[
            str,
            Query(
                max_length=128,
                description="Identity given to the transcript's segments (default caller)",
                json_schema_extra={"pattern": IDENTITY_PATTERN},
            ),
        ] = "",
    ) -> Any:
        only(who, "agent")

        async def still_there() -> bool:
            return not await request.is_disconnected()

        try:
            guard = UploadGuard.from_settings(
                settings, content_type=request.headers.get("content-type")
            )
            speaker = validate_identity(speaker or "caller", "speaker")
            # Limits first: a refused request costs no reading of its body.
            with work.admit(who.identity):
                async with work.upload(request.stream(), guard) as path:
                    await work.check_declared(path)
                    result = await work.run(path, speaker=speaker, wanted=still_there)
        except ValidationError as exc:
            return _error(http_status_for(exc), exc.code, exc.message)
        except ClientDisconnect:
            # The client went away mid-upload: nobody reads this answer.
            log.info("speech upload cut off by the client")
            return _error(400, "invalid_input", "file: the upload was cut off")
        return SpeechOut.model_validate(result)


# A room name no call uses: listing it is the cheapest question LiveKit answers.
READY_PROBE_ROOM = "softphone-ready-probe"


@contextlib.asynccontextmanager
async def build_service(
    settings: Settings, *, readiness: Readiness | None = None
) -> AsyncIterator[TransferOrchestrator]:
    """The orchestrator and its dependencies, built from settings, closed at the end.

    The live state (calls, transfers, leases, events) is in Redis: the one
    ``REDIS_URL`` names, shared by every replica, or else a private one
    started for this replica. The chain of custody goes to PostgreSQL when
    ``DATABASE_URL`` is set (every replica writes there), else to the
    backend profile's SQLite history. Each dependency that can become
    unreachable adds a check to ``readiness`` where it is built.

    Raises:
        ConfigError: No LiveKit URL, key or secret.
    """
    from softphone.infra.redis_server import redis_from_env
    from softphone.server.command_signer import CommandSigner
    from softphone.server.redis_call_registry import RedisCallRegistry
    from softphone.server.redis_state import RedisState
    from softphone.speech.factory import make_offline_summarizer, make_summarizer
    from softphone.store.custody import CustodyLog

    secret = settings.livekit_api_secret
    if not settings.livekit_url or not settings.livekit_api_key or secret is None:
        raise ConfigError("the backend needs LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
    minter = TokenMinter(
        api_key=settings.livekit_api_key, api_secret=secret, default_ttl_s=settings.token_ttl_s
    )
    settings.ensure_dirs()
    redis_env = {"REDIS_URL": settings.redis_url.get()} if settings.redis_url else {}
    async with contextlib.AsyncExitStack() as stack:
        rooms = await stack.enter_async_context(
            RoomAdmin(url=settings.livekit_url, api_key=settings.livekit_api_key, api_secret=secret)
        )
        if not redis_env:
            log.warning("no REDIS_URL: a private Redis for this one replica")
        endpoint = await stack.enter_async_context(
            redis_from_env(redis_env, workdir=settings.profile_dir / "redis")
        )
        state = RedisState(url=endpoint.url, prefix=settings.redis_prefix)
        registry = RedisCallRegistry(url=endpoint.url, prefix=settings.redis_prefix)
        stack.push_async_callback(registry.aclose)
        history: CustodyLog
        if settings.database_url is not None:
            records = await stack.enter_async_context(PostgresRecords(settings.database_url))
            history = records
        else:
            history = await stack.enter_async_context(HistoryStore(settings.history_path))
            records = None
        if readiness is not None:
            readiness.add("livekit", lambda: rooms.list_rooms([READY_PROBE_ROOM]))
            readiness.add("redis", state.ready)
            if records is not None:
                readiness.add("postgres", records.check)
        service = TransferOrchestrator(
            url=settings.livekit_url,
            rooms=rooms,
            minter=minter,
            summarizer=make_summarizer(settings),
            fallback_summarizer=make_offline_summarizer(settings),
            lobby_room=settings.lobby_room,
            offer_timeout_s=settings.offer_timeout_s,
            move_timeout_s=settings.move_timeout_s,
            # With webhooks the rooms are looked at when something happens;
            # the poll stays only as a safety net for a lost delivery.
            poll_interval_s=2.0 if settings.livekit_webhooks else 0.25,
            # A's app plays the hold tone to app callers; a service participant
            # would be one more encoder per call here (phones will need it).
            hold_audio=False,
            history=history,
            registry=registry,
            state=state,
            lease_ttl_s=settings.lease_ttl_s,
            signer=CommandSigner(settings.command_signing_key),
        )
        async with service:
            await service.start()
            yield service


def build_app(settings: Settings, *, speech_limits: SpeechLimits | None = None) -> FastAPI:
    """An app that builds its service from ``settings`` at startup (for uvicorn).

    Raises:
        ConfigError: The keys file is missing or malformed.
    """
    keys = KeyRing.load(settings.backend_keys_file)
    holder: dict[str, TransferOrchestrator] = {}
    metrics = ServiceMetrics()
    readiness = Readiness()
    work = SpeechWork(
        limits=speech_limits or SpeechLimits(),
        settings=settings,
        metrics=metrics,
        log_level=settings.log_level,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with build_service(settings, readiness=readiness) as service, work:
            holder["service"] = service
            unwatch = metrics.watch(service)
            try:
                yield
            finally:
                unwatch()
                from softphone.speech.offline_summarizer import stop_entity_worker

                # Bounded: a worker that does not stop dies with this process anyway.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(stop_entity_worker), STOP_WORKER_S)

    app = _new_app(lifespan, metrics)
    app.state.keys = keys
    _routes(
        app,
        lambda: holder["service"],
        settings,
        work=work,
        metrics=metrics,
        readiness=readiness,
    )
    from softphone.backend.live_events import add_live_event_routes  # it builds on this module

    secret = settings.livekit_api_secret
    if secret is not None:
        add_live_event_routes(
            app, lambda: holder["service"], api_key=settings.livekit_api_key, api_secret=secret
        )

    if settings.database_url is not None:
        # The records are searchable where every replica writes them: PostgreSQL.

        def get_records() -> PostgresRecords:
            records = holder["service"].history
            assert isinstance(records, PostgresRecords)
            return records

        app.include_router(records_router(get_records, principal))
    return app
