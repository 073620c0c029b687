"""Several backend replicas on one Redis, killed with real signals mid-transfer.

The replica that started a transfer drives it and renews its lease in Redis;
killed (SIGKILL), its lease lapses and the other replica takes the transfer
over: the caller, still in R1, goes back to A (``returned``, ``network``),
R2 closes and B's phone stops ringing. A's app talks to both replicas (its
client moves on to the one that answers), so it learns the outcome from the
survivor. A lone replica that restarts reconciles the same way. LiveKit's
webhooks reach the replicas signed, and a forged one changes nothing; the
event stream carries a transfer's changes to its parties from any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from softphone.client.lobby import Withdrawn
from softphone.client.remote_service import RemoteTransferService
from softphone.config import Secret
from softphone.errors import NotFoundError
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.infra.postgres_server import LocalPostgres
from softphone.infra.redis_server import LocalRedisServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.protocol import TransferService
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.transfer.backend_process import BackendProcess
from tests.transfer.conftest import (
    A_HZ,
    B_HZ,
    CALLER_HZ,
    HEARD,
    MIC,
    TransferEnv,
    eventually,
    hears,
    hears_track,
    open_call,
    silent,
)

LEASE_TTL_S = 2.0


def _replica_pair(
    livekit_server: LocalLiveKitServer,
    redis_url: str,
    workdir: Path,
    lobby: str,
    extra_env: dict[str, str] | None = None,
    ports: tuple[int | None, int | None] = (None, None),
) -> tuple[BackendProcess, BackendProcess]:
    env = {"SOFTPHONE_LEASE_TTL_S": str(LEASE_TTL_S), **(extra_env or {})}
    (workdir / "one").mkdir()
    (workdir / "two").mkdir()
    one = BackendProcess(
        livekit_server=livekit_server,
        workdir=workdir / "one",
        lobby=lobby,
        offer_timeout_s=30.0,
        redis_url=redis_url,
        extra_env=env,
        port=ports[0],
    )
    two = BackendProcess(
        livekit_server=livekit_server,
        workdir=workdir / "two",
        lobby=lobby,
        offer_timeout_s=30.0,
        redis_url=redis_url,
        extra_env=env,
        replica_of=one,
        port=ports[1],
    )
    return one, two


@contextlib.asynccontextmanager
async def replicas_env(
    one: BackendProcess, two: BackendProcess, *, url: str, minter: TokenMinter
) -> AsyncIterator[TransferEnv]:
    """A's app asks replica one first (so one drives A's transfers), everyone else two.

    Every client lists both replicas, as the apps are configured with them.
    """
    clients: dict[str, RemoteTransferService] = {}

    def service_for(identity: str) -> TransferService:
        if identity not in clients:
            first, second = (one, two) if identity.startswith("agent-a-") else (two, one)
            clients[identity] = RemoteTransferService(
                base_url=[first.url, second.url], api_key=Secret(one.keys[identity])
            )
        return clients[identity]

    try:
        yield TransferEnv(
            kind="backend",
            url=url,
            lobby=one.lobby,
            minter=minter,
            service_for=service_for,
            backend=one,
        )
    finally:
        for client in clients.values():
            await client.aclose()


async def _in_room(rooms: RoomAdmin, room: str) -> set[str]:
    try:
        return {p.identity for p in await rooms.list_participants(room)}
    except NotFoundError:
        return set()


async def _closed(rooms: RoomAdmin, room: str) -> bool:
    return not await _in_room(rooms, room)


async def _true(value: object) -> bool:
    return bool(value)


@pytest.mark.parametrize("phase", ["offering", "consulting"])
async def test_a_killed_replica_hands_its_transfer_to_the_other(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    room_admin: RoomAdmin,
    tmp_path: Path,
    phase: str,
) -> None:
    one, two = _replica_pair(livekit_server, redis_server.url, tmp_path, f"lobby-fo-{phase}")
    async with (
        one,
        two,
        replicas_env(one, two, url=livekit_server.url, minter=minter) as env,
        open_call(env, prefix=f"fo-{phase}") as call,
    ):
        a, b, caller = call.a.identity, call.b.identity, call.caller.identity
        dropped: list[Withdrawn] = []
        call.b_lobby.on("offer_withdrawn", dropped.append)
        ticket = await call.a_call.transfer(caller=caller, to_agent=b)
        tid, r2 = ticket.transfer_id, ticket.new_room
        offer = await call.next_offer()
        if phase == "consulting":
            b_session = await call.b_lobby.accept(offer.transfer_id)
            await call.a_service.wait_for_phase(tid, ["consulting"])
            await eventually(lambda: _true(call.a_call.consult is not None))
            assert await hears(b_session, a, A_HZ) > HEARD

        one.kill()  # the replica driving the transfer: a crash, not a stop
        killed = time.monotonic()
        survivor = env.service_for(caller)
        snap = await survivor.wait_for_phase(tid, ["returned", "completed", "ended"], timeout_s=30)
        print(f"\n{phase}: transfer settled {time.monotonic() - killed:.2f} s after the kill")
        assert snap.phase == "returned", snap
        assert snap.reason is not None and snap.reason.code == "network"
        # The caller hears A again (A's app learnt it from the surviving replica).
        await eventually(lambda: _true(not call.a_call.session.muted), timeout_s=15.0)
        assert await hears_track(call.caller_session, a, MIC, A_HZ) > HEARD
        # R2 is closed, and the consult with it; B's phone stopped ringing.
        await eventually(lambda: _closed(room_admin, r2))
        if phase == "offering":
            await eventually(lambda: _true([w for w in dropped if w.transfer_id == tid]))
        else:
            assert await silent(b_session, a, A_HZ)
        # The call is A's again, on the survivor too: another transfer may start.
        [mine] = await env.service_for(a).list_calls(identity=a, role="agent")
        assert (mine.room, mine.agent, mine.consult_rooms) == (call.room, a, ())


async def test_a_replica_killed_while_the_caller_meets_b_hands_the_call_to_b(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    room_admin: RoomAdmin,
    tmp_path: Path,
) -> None:
    """``completing`` (a warm introduction: the caller already talks with A and B in R2).

    The survivor sees the caller in R2 and finishes the transfer: the call is B's.
    """
    one, two = _replica_pair(livekit_server, redis_server.url, tmp_path, "lobby-fo-intro")
    async with (
        one,
        two,
        replicas_env(one, two, url=livekit_server.url, minter=minter) as env,
        open_call(env, prefix="fo-intro") as call,
    ):
        a, b, caller = call.a.identity, call.b.identity, call.caller.identity
        ticket = await call.a_call.transfer(caller=caller, to_agent=b, mode="warm_intro")
        b_session = await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        snap = await call.a_service.complete(ticket.transfer_id, agent=a)
        assert snap.phase == "completing"
        assert call.mover is not None
        assert await hears(call.mover.session, b, B_HZ) > HEARD
        one.kill()
        snap = await env.service_for(caller).wait_for_phase(
            ticket.transfer_id, ["completed", "returned", "ended"], timeout_s=30
        )
        assert snap.phase == "completed", snap
        # B has the call in R2; A was taken out, R1 closed.
        await eventually(lambda: _true(a not in b_session.remote_identities()))
        assert await hears(call.mover.session, b, B_HZ) > HEARD
        assert await hears(b_session, caller, CALLER_HZ) > HEARD
        await eventually(lambda: _closed(room_admin, call.room))
        [theirs] = await env.service_for(b).list_calls(identity=b, role="agent")
        assert (theirs.room, theirs.agent) == (ticket.new_room, b)


async def test_a_lone_replica_restarted_reconciles(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    room_admin: RoomAdmin,
    tmp_path: Path,
) -> None:
    """Killed while A and B consult, started again: R2 closed, the caller A's."""
    one, two = _replica_pair(livekit_server, redis_server.url, tmp_path, "lobby-restart")
    async with (
        one,
        replicas_env(one, two, url=livekit_server.url, minter=minter) as env,
        open_call(env, prefix="restart") as call,
    ):
        a, b, caller = call.a.identity, call.b.identity, call.caller.identity
        ticket = await call.a_call.transfer(caller=caller, to_agent=b)
        await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        one.kill()
        await asyncio.sleep(LEASE_TTL_S + 0.5)  # down past its lease
        async with one:
            snap = await env.service_for(caller).wait_for_phase(
                ticket.transfer_id, ["returned"], timeout_s=30
            )
            assert snap.reason is not None and snap.reason.code == "network"
            await eventually(lambda: _closed(room_admin, ticket.new_room))
            assert b not in await _in_room(room_admin, call.room)
            await eventually(lambda: _true(not call.a_call.session.muted), timeout_s=15.0)
            assert await hears_track(call.caller_session, a, MIC, A_HZ) > HEARD


async def _read_events(
    url: str, key: str, into: list[dict[str, Any]], opened: asyncio.Event
) -> None:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as http,
        http.stream("GET", f"{url}/v1/events", headers={"Authorization": f"Bearer {key}"}) as res,
    ):
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        opened.set()
        async for line in res.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[len("data: ") :]))


async def test_events_reach_each_party_from_any_replica(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    tmp_path: Path,
) -> None:
    one, two = _replica_pair(livekit_server, redis_server.url, tmp_path, "lobby-events")
    async with (
        one,
        two,
        replicas_env(one, two, url=livekit_server.url, minter=minter) as env,
        open_call(env, prefix="events") as call,
    ):
        a, b = call.a.identity, call.b.identity
        seen: dict[str, list[dict[str, Any]]] = {a: [], "caller-398": [], "supervisor-3": []}
        readers = []
        for who, replica in ((a, two), ("caller-398", two), ("supervisor-3", one)):
            opened = asyncio.Event()
            readers.append(
                asyncio.create_task(_read_events(replica.url, one.keys[who], seen[who], opened))
            )
            await asyncio.wait_for(opened.wait(), 10)
        try:
            # A's transfer runs on replica one; A listens on replica two.
            ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=b)
            await call.b_lobby.decline((await call.next_offer()).transfer_id, "busy")

            def phases(who: str) -> list[str]:
                return [
                    e["transfer"]["phase"]
                    for e in seen[who]
                    if e["type"] == "transfer"
                    and e["transfer"]["transfer_id"] == ticket.transfer_id
                ]

            await eventually(lambda: _true("returned" in phases(a)))
            await eventually(lambda: _true("returned" in phases("supervisor-3")))
            assert phases(a)[0] == "preparing"
            # Somebody else's caller hears nothing of it.
            assert seen["caller-398"] == []
            # An identity may hold only a few streams open at once.
            async with httpx.AsyncClient(timeout=5.0) as http:
                statuses = []
                extra = [
                    asyncio.create_task(_read_events(two.url, one.keys[a], [], asyncio.Event()))
                    for _ in range(3)
                ]
                await asyncio.sleep(1.0)
                res = await http.get(
                    f"{two.url}/v1/events", headers={"Authorization": f"Bearer {one.keys[a]}"}
                )
                statuses.append(res.status_code)
                for task in extra:
                    task.cancel()
                await asyncio.gather(*extra, return_exceptions=True)
            assert statuses == [429]
            assert res.headers["retry-after"]
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)


async def test_livekit_webhooks_reach_the_replicas_and_forgeries_do_not(
    redis_server: LocalRedisServer, artifacts_dir: Path, tmp_path: Path
) -> None:
    """A LiveKit server of its own that sends its webhooks to both replicas.

    The replicas poll rooms only every 2 s as a safety net; B leaving the
    consult is seen through the webhook.
    """
    ports = (free_port(), free_port())
    server = LocalLiveKitServer(
        binary=ensure_server_binary(),
        log_path=artifacts_dir / "livekit-webhooks.log",
        webhook_urls=[f"http://127.0.0.1:{p}/v1/livekit/webhook" for p in ports],
    )
    async with server:
        one, two = _replica_pair(
            server,
            redis_server.url,
            tmp_path,
            "lobby-hooks",
            {"SOFTPHONE_LIVEKIT_WEBHOOKS": "true"},
            ports,
        )
        minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        async with (
            one,
            two,
            replicas_env(one, two, url=server.url, minter=minter) as env,
            open_call(env, prefix="hooks") as call,
            httpx.AsyncClient(timeout=10.0) as http,
        ):
            # A forged webhook (signed with another secret) is refused and changes nothing.
            forged_body = json.dumps({"event": "room_finished", "room": {"name": call.room}})
            forged = await http.post(
                f"{two.url}/v1/livekit/webhook",
                content=forged_body,
                headers={
                    "Authorization": TokenMinter(
                        api_key=server.api_key, api_secret=Secret("x" * 40)
                    )
                    .mint(role="agent", identity="x", room="x")
                    .token,
                    "Content-Type": "application/webhook+json",
                },
            )
            assert forged.status_code == 401
            unsigned = await http.post(
                f"{one.url}/v1/livekit/webhook",
                content=forged_body,
                headers={"Content-Type": "application/webhook+json"},
            )
            assert unsigned.status_code == 401
            ticket = await call.a_call.transfer(
                caller=call.caller.identity, to_agent=call.b.identity
            )
            b_session = await call.b_lobby.accept((await call.next_offer()).transfer_id)
            await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
            await b_session.aclose()  # B hangs up the consult
            snap = await call.a_service.wait_for_phase(
                ticket.transfer_id, ["returned"], timeout_s=20
            )
            assert snap.reason is not None and snap.reason.code == "agent_left"
            # LiveKit's own deliveries were accepted (signed with the deployment's secret).
            accepted = 0.0
            for replica in (one, two):
                res = await http.get(
                    f"{replica.url}/metrics",
                    headers={"Authorization": f"Bearer {one.keys['supervisor-1']}"},
                )
                for line in res.text.splitlines():
                    if (
                        line.startswith("softphone_http_request_seconds_count")
                        and "/v1/livekit/webhook" in line
                        and 'status="204"' in line
                    ):
                        accepted += float(line.rsplit(" ", 1)[1])
            assert accepted > 0


async def test_every_replica_writes_and_finds_the_records_in_postgresql(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    postgres: LocalPostgres,
    tmp_path: Path,
) -> None:
    """Two replicas with ``DATABASE_URL``: a transfer driven by one is on record for both."""
    dsn = await postgres.create_database(f"replicas_{uuid.uuid4().hex[:10]}")
    one, two = _replica_pair(
        livekit_server, redis_server.url, tmp_path, "lobby-records", {"DATABASE_URL": dsn.get()}
    )
    async with (
        one,
        two,
        replicas_env(one, two, url=livekit_server.url, minter=minter) as env,
        open_call(env, prefix="records") as call,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        a, b = call.a.identity, call.b.identity
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=b)
        await call.b_lobby.decline((await call.next_offer()).transfer_id, "at lunch")
        await call.a_service.wait_for_phase(ticket.transfer_id, ["returned"])

        def get(replica: BackendProcess, who: str, path: str) -> Any:
            return http.get(
                f"{replica.url}/v1/records/calls{path}",
                headers={"Authorization": f"Bearer {one.keys[who]}"},
            )

        async def on_record() -> bool:
            res = await get(two, b, "")
            return res.status_code == 200 and bool(res.json()["calls"])

        await eventually(on_record)  # B (a party through the transfer) finds it on replica two
        [found] = (await get(two, b, "")).json()["calls"]
        assert found["room"] == call.room
        dossier = (await get(one, "supervisor-2", f"/{found['call_id']}")).json()
        assert {(p["identity"], p["role"]) for p in dossier["parties"]} >= {
            (a, "agent"),
            (call.caller.identity, "caller"),
        }
        assert [(o["outcome"], o["reason"]) for o in dossier["outcomes"]] == [
            ("returned", "declined")
        ]
        # An agent who had no part in it finds nothing, and cannot open it.
        assert (await get(one, "agent-a-399", "")).json()["calls"] == []
        assert (await get(two, "agent-a-399", f"/{found['call_id']}")).status_code == 404
        # The database is ready on both (readiness checks it).
        for replica in (one, two):
            ready = (await http.get(f"{replica.url}/ready")).json()
            assert ready["checks"]["postgres"] == "ok"
