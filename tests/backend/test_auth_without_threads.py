"""Authentication answers while the app's thread pool is taken.

FastAPI runs plain-function dependencies in anyio's thread pool (40 threads
per event loop). The key check is on every request of every route: were it
such a function, each request would wait for a free thread and then for the
GIL, which under load (``bench/scale.py``: 25 completes at once beside the
replicas' long polls and LiveKit's webhooks) held every route 0.6 s before
its first line ran. Here the pool is taken whole by this test, as a burst of
thread work would take it; authenticated routes must still answer.
"""

from __future__ import annotations

import asyncio
import uuid

import anyio.to_thread
import httpx
import pytest

from softphone.backend.app import KeyRing, Principal, create_app
from softphone.infra.local_server import LocalLiveKitServer
from softphone.server.token_minter import TokenMinter
from tests.backend.test_records_api import KEYS, WHO, serve
from tests.transfer.conftest import embedded_service

pytestmark = pytest.mark.integration


async def test_an_authenticated_route_answers_with_no_thread_free(
    livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> None:
    lobby = f"lobby-auth-{uuid.uuid4().hex[:6]}"
    async with embedded_service(livekit_server, minter, lobby=lobby) as env:
        keys = KeyRing({KEYS[i]: Principal(i, r) for i, r in WHO.items()})  # type: ignore[arg-type]
        async with serve(create_app(service=env.service_for(""), keys=keys)) as url:
            # uvicorn serves from this event loop: its pool is this limiter.
            limiter = anyio.to_thread.current_default_thread_limiter()
            holders = [object() for _ in range(int(limiter.total_tokens))]
            for holder in holders:
                await limiter.acquire_on_behalf_of(holder)
            try:
                assert limiter.available_tokens == 0
                headers = {"Authorization": f"Bearer {KEYS['agent-x']}"}
                async with httpx.AsyncClient(base_url=url, headers=headers) as http:
                    service = await asyncio.wait_for(http.get("/v1/service"), 10)
                    unknown = await asyncio.wait_for(
                        http.get("/v1/service", headers={"Authorization": "Bearer x" * 20}), 10
                    )
            finally:
                for holder in holders:
                    limiter.release_on_behalf_of(holder)
    assert service.status_code == 200, service.text
    assert service.json()["lobby_room"] == lobby
    assert unknown.status_code == 401
