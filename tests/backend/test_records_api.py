"""The records API over HTTP: the real app, its key ring and error mapping, under uvicorn.

The router is mounted on the app ``create_app`` builds (with a real
orchestrator on the session's LiveKit server as its service) and served by
uvicorn in this process; records live in a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from softphone.backend.app import KeyRing, Principal, create_app, principal
from softphone.backend.records_api import records_router
from softphone.config import Secret
from softphone.domain.summary import SummaryCard
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.infra.postgres_server import LocalPostgres
from softphone.server.token_minter import TokenMinter
from softphone.store.records import PostgresRecords
from tests.backend.conftest import until
from tests.transfer.conftest import embedded_service

pytestmark = pytest.mark.integration

WHO = {
    "agent-x": "agent",
    "agent-y": "agent",
    "boss": "supervisor",
    "caller-1": "caller",
    "gateway": "service",
}
KEYS = {identity: secrets.token_urlsafe(24) for identity in WHO}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: _true(server.started or task.done()))
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def records_app(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, get_records: Callable[[], Any]
) -> AsyncIterator[str]:
    """The backend's app with the records router, served; yields its URL."""
    lobby = f"lobby-records-api-{uuid.uuid4().hex[:6]}"
    async with embedded_service(livekit_server, minter, lobby=lobby) as env:
        keys = KeyRing({KEYS[i]: Principal(i, r) for i, r in WHO.items()})  # type: ignore[arg-type]
        app = create_app(service=env.service_for(""), keys=keys)
        app.include_router(records_router(get_records, principal))
        async with serve(app) as url:
            yield url


@pytest.fixture
async def db(postgres: LocalPostgres) -> AsyncIterator[Secret]:
    """The URL of a new database for this test."""
    name = f"api_{uuid.uuid4().hex[:12]}"
    dsn = await postgres.create_database(name)
    try:
        yield dsn
    finally:
        await postgres.drop_database(name)


@pytest.fixture
async def records(db: Secret) -> AsyncIterator[PostgresRecords]:
    """Records where x1 is agent-x's, y1 and y2 agent-y's (y2 was offered to agent-x)."""
    async with PostgresRecords(db) as store:
        await store.start_call("call-x1", call_id="x1", caller="caller-1", agent="agent-x")
        await store.start_call("call-y1", call_id="y1", caller="caller-2", agent="agent-y")
        await store.start_call("call-y2", call_id="y2", caller="caller-3", agent="agent-y")
        await store.add_summary("y1", SummaryCard(reason="refund for a broken screen"))
        for phase in ("preparing", "offering", "returned"):
            detail = {"reason": {"code": "declined", "text": "busy"}} if phase == "returned" else {}
            await store.add_transfer_event(
                "y2", "t-y2", phase, from_agent="agent-y", to_agent="agent-x", detail=detail
            )
        yield store


def _client(url: str, identity: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {KEYS[identity]}"} if identity else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0)


async def _ids(http: httpx.AsyncClient, **params: Any) -> set[str]:
    res = await http.get("/v1/records/calls", params=params)
    assert res.status_code == 200, res.text
    return {c["call_id"] for c in res.json()["calls"]}


async def _counts(dsn: Secret) -> tuple[int, ...]:
    conn = await asyncpg.connect(dsn.get())
    try:
        tables = ("calls", "call_parties", "transfer_events", "summaries", "transfer_outcomes")
        return tuple([int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables])
    finally:
        await conn.close()


async def test_rights_over_http(
    records: PostgresRecords, livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> None:
    async with records_app(livekit_server, minter, lambda: records) as url:
        async with _client(url, "agent-x") as x, _client(url, "boss") as boss:
            assert await _ids(x) == {"x1", "y2"}
            assert await _ids(boss) == {"x1", "y1", "y2"}
            assert await _ids(boss, q="REFUND") == {"y1"}
            assert await _ids(boss, agent="agent-x") == {"x1", "y2"}
            assert await _ids(x, q="refund") == set()
            res = await x.get("/v1/records/calls/y2")
            assert res.status_code == 200, res.text
            body = res.json()
            assert [e["phase"] for e in body["transfers"]] == ["preparing", "offering", "returned"]
            assert body["outcomes"][0]["outcome"] == "returned"
            assert body["outcomes"][0]["reason"] == "declined"
            hidden = await x.get("/v1/records/calls/y1")
            missing = await x.get("/v1/records/calls/no-such-call")
            assert hidden.status_code == missing.status_code == 404
            assert hidden.json() == missing.json()
            assert hidden.json()["code"] == "not_found"
            res = await boss.get("/v1/records/calls/y1")
            assert res.status_code == 200
            assert res.json()["summaries"][0]["card"]["reason"] == "refund for a broken screen"
        for identity in ("caller-1", "gateway"):
            async with _client(url, identity) as other:
                for path in ("/v1/records/calls", "/v1/records/calls/x1"):
                    res = await other.get(path)
                    assert res.status_code == 403 and res.json()["code"] == "forbidden"
        async with _client(url, None) as anonymous:
            assert (await anonymous.get("/v1/records/calls")).status_code == 401
            res = await anonymous.get(
                "/v1/records/calls", headers={"Authorization": "Bearer not-a-key-at-all"}
            )
            assert res.status_code == 401
        async with httpx.AsyncClient(base_url=url) as http:
            paths = (await http.get("/openapi.json")).json()["paths"]
            assert {"/v1/records/calls", "/v1/records/calls/{call_id}"} <= set(paths)


async def test_hostile_parameters_are_refused_and_change_nothing(
    records: PostgresRecords,
    db: Secret,
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
) -> None:
    before = await _counts(db)
    async with (
        records_app(livekit_server, minter, lambda: records) as url,
        _client(url, "boss") as boss,
    ):
        harmless = ["' OR '1'='1", "x'; DROP TABLE calls; --", "%", "_", "\\", "ü€"]
        for q in harmless:
            assert await _ids(boss, q=q) == set(), q
        refused: list[dict[str, Any]] = [
            {"q": "a\x00b"},
            {"q": "\n"},
            {"q": "a" * 201},
            {"q": "a" * 10_000},
            {"limit": 0},
            {"limit": 201},
            {"limit": "ten"},
            {"limit": "1e9"},
            {"agent": "agent x"},
            {"agent": "'--"},
            {"since": "yesterday"},
            {"since": "1e30"},
            {"until": "-5"},
            {"before": "x"},
            {"before": "1.p01' OR 1=1"},
        ]
        for params in refused:
            res = await boss.get("/v1/records/calls", params=params)
            assert res.status_code == 400, (params, res.text)
            assert res.json()["code"] == "invalid_input", params
        for call_id in ("x1'--", "a" * 129, "x1%00", "..", "x1 OR 1=1"):
            res = await boss.get(f"/v1/records/calls/{call_id}")
            assert res.status_code in (400, 404), (call_id, res.text)
        page = await boss.get("/v1/records/calls", params={"limit": 2})
        assert page.status_code == 200 and len(page.json()["calls"]) == 2
        rest = await boss.get(
            "/v1/records/calls", params={"limit": 2, "before": page.json()["next_before"]}
        )
        assert len(rest.json()["calls"]) == 1 and rest.json()["next_before"] is None
        window = await _ids(boss, since="2000-01-01T00:00:00Z", until="2999-01-01T00:00:00")
        assert window == {"x1", "y1", "y2"}
        assert await _ids(boss, until="2000-01-01T00:00:00+02:00") == set()
    assert await _counts(db) == before


async def test_an_unreachable_database_is_a_503(
    livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> None:
    async with (
        LocalPostgres(fsync=False) as server,
        PostgresRecords(server.dsn, max_connections=2) as store,
    ):
        await store.start_call("call-z", call_id="z", agent="agent-x")
        async with (
            records_app(livekit_server, minter, lambda: store) as url,
            _client(url, "agent-x") as x,
        ):
            assert await _ids(x) == {"z"}
            await server.stop(kill=True)
            res = await x.get("/v1/records/calls")
            assert res.status_code == 503, res.text
            assert res.json()["code"] == "history_error"
            assert server.password.get() not in res.text
            res = await x.get("/v1/records/calls/z")
            assert res.status_code == 503
            await server.start()

            async def answers() -> bool:
                return (await x.get("/v1/records/calls")).status_code == 200

            await until(answers, timeout_s=60.0)
            assert await _ids(x) == {"z"}
