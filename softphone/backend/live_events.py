"""What happens, as it happens: LiveKit's webhooks in, server-sent events out.

``POST /v1/livekit/webhook`` receives LiveKit's webhooks (the ``webhook``
section of the server config), checked with ``livekit.api.WebhookReceiver``:
a JWT signed with the deployment's API secret that carries the body's
SHA-256. A participant joining or leaving, a track (un)published or a room
finishing is published to every replica, and the replica driving a transfer
in that room looks at once. A webhook is a hint, never evidence: the replica
checks the room through the server API before any step, so a replayed or
out-of-order delivery changes nothing by itself, and the orchestrator's slow
poll remains as a safety net for lost deliveries.

``GET /v1/events`` is a server-sent-event stream for the apps: every change of
a transfer or call the key's identity is a party of (supervisors: all of
them), from whichever replica it happened on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from livekit import api

from softphone.backend.app import Principal, Who
from softphone.config import Secret
from softphone.errors import SoftphoneError
from softphone.server.transfer_orchestrator import TransferOrchestrator

log = logging.getLogger(__name__)

# The webhook events that can change a transfer.
ROOM_EVENTS = frozenset(
    {
        "participant_joined",
        "participant_left",
        "track_published",
        "track_unpublished",
        "room_finished",
    }
)
# Event streams one identity may hold open at once, and events kept for a slow reader.
MAX_STREAMS_PER_IDENTITY = 4
STREAM_QUEUE = 256
KEEPALIVE_S = 15.0


def visible_to(event: dict[str, Any], who: Principal) -> bool:
    """Whether ``who`` may see ``event``: parties see their own, supervisors all."""
    if who.role == "supervisor":
        return event.get("type") in ("transfer", "call")
    if event.get("type") == "transfer":
        t = event.get("transfer") or {}
        return who.identity in (t.get("caller"), t.get("from_agent"), t.get("to_agent"))
    if event.get("type") == "call":
        c = event.get("call") or {}
        return who.identity in (c.get("caller"), c.get("agent"))
    return False


def add_live_event_routes(
    app: FastAPI,
    get_service: Callable[[], TransferOrchestrator],
    *,
    api_key: str,
    api_secret: Secret,
) -> None:
    """Add the webhook receiver and the event stream to ``app``."""
    receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret.get()))
    streams: dict[str, int] = {}

    @app.post("/v1/livekit/webhook", include_in_schema=False)
    async def livekit_webhook(request: Request) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        try:
            event = receiver.receive(body, request.headers.get("authorization", ""))
        except Exception:
            # Not from our LiveKit server (or altered on the way): refused, unlogged.
            return JSONResponse(
                {"code": "unauthorized", "message": "not a webhook signed by this deployment"},
                status_code=401,
            )
        if event.event in ROOM_EVENTS and event.room.name:
            try:
                await get_service().room_event(
                    event.event, room=event.room.name, identity=event.participant.identity
                )
            except SoftphoneError:
                log.warning("could not pass a webhook on", extra={"event": event.event})
        return Response(status_code=204)

    @app.get(
        "/v1/events",
        summary="Server-sent events: changes of your transfers and calls",
        response_class=StreamingResponse,
        responses={429: {"description": "Too many event streams open for this identity"}},
    )
    async def events(request: Request, who: Who) -> Response:
        if streams.get(who.identity, 0) >= MAX_STREAMS_PER_IDENTITY:
            return JSONResponse(
                {"code": "too_many", "message": "too many event streams open"},
                status_code=429,
                headers={"Retry-After": "5"},
            )
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=STREAM_QUEUE)

        def on_event(event: dict[str, Any]) -> None:
            if not visible_to(event, who):
                return
            if queue.full():  # a reader that does not keep up loses the oldest
                queue.get_nowait()
            queue.put_nowait(event)

        # Counted and subscribed from the moment the stream starts until it
        # ends, however it ends (a response never sent starts nothing).
        async def stream() -> AsyncIterator[str]:
            streams[who.identity] = streams.get(who.identity, 0) + 1
            unsubscribe = get_service().state.on_event(on_event)
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            finally:
                unsubscribe()
                streams[who.identity] -= 1
                if not streams[who.identity]:
                    del streams[who.identity]

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )
