"""Bad input: each a clear 4xx (or the matching error in-process) and nothing changed."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import httpx
import pytest

from softphone.errors import (
    BackendError,
    NotFoundError,
    SoftphoneError,
    TransferError,
    ValidationError,
)
from softphone.media.session import RtcSession
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from tests.transfer.conftest import TransferEnv, open_call

pytestmark = pytest.mark.integration

_KIND = {400: ValidationError, 404: NotFoundError, 409: TransferError}


async def refused(env: TransferEnv, aw: Awaitable[Any], status: int) -> SoftphoneError:
    """``aw`` fails with ``status`` (backend) or the matching error class (embedded)."""
    with pytest.raises(SoftphoneError) as info:
        await aw
    err = info.value
    if env.kind == "backend":
        assert isinstance(err, BackendError) and err.status == status, err
    else:
        assert isinstance(err, _KIND[status]), err
    assert err.message
    return err


async def _rooms(rooms: RoomAdmin) -> set[str]:
    return {r.name for r in await rooms.list_rooms()}


async def test_bad_requests_are_refused_and_change_nothing(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    env = transfer_env
    async with open_call(env, prefix="bad") as call:
        a = call.a_service
        good = TransferRequest(
            caller=call.caller.identity,
            from_agent=call.a.identity,
            to_agent=call.b.identity,
            call_room=call.room,
        )
        before = await _rooms(room_admin)

        def req(**kw: Any) -> TransferRequest:
            return TransferRequest(**{**good.__dict__, **kw})

        await refused(env, a.start_transfer(req(call_room="no-such-room-42")), 404)
        await refused(env, a.start_transfer(req(to_agent="agent-b-999")), 404)
        await refused(env, a.start_transfer(req(caller="caller-999")), 404)
        err = await refused(env, a.start_transfer(req(to_agent=call.a.identity)), 400)
        assert "oneself" in err.message
        await refused(env, a.start_transfer(req(mode="hot")), 400)  # type: ignore[arg-type]
        await refused(env, a.status("no-such-transfer"), 404)
        await refused(
            env, a.mint_token(identity=call.a.identity, room="no-such-room-42", role="agent"), 404
        )
        # A token minted on request (e.g. one handed out earlier expired) joins its room.
        grant = await a.mint_token(identity=call.a.identity, room=env.lobby, role="agent")
        assert (grant.identity, grant.room, grant.url) == (call.a.identity, env.lobby, env.url)
        async with RtcSession(url=grant.url, token=grant.token) as again:
            assert again.room_name == env.lobby
        # Nothing created, the call room still there. (Compared as differences:
        # a room another test closed may still be going away meanwhile.)
        now = await _rooms(room_admin)
        assert now - before == set() and call.room in now
        assert call.offers.empty()

        ticket = await a.start_transfer(good)
        await refused(env, a.start_transfer(good), 409)
        await refused(env, a.complete(ticket.transfer_id, agent=call.a.identity), 409)
        snap = await a.status(ticket.transfer_id)
        assert snap.phase == "offering"
        now = await _rooms(room_admin)
        assert now - before == {ticket.new_room} and call.room in now
        await a.cancel(ticket.transfer_id, agent=call.a.identity)


async def test_backend_auth_and_malformed_json(
    backend_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    backend = backend_env.backend
    assert backend is not None
    async with open_call(backend_env, prefix="auth") as call:
        caller_key = backend.keys[call.caller.identity]
        a_key = backend.keys[call.a.identity]
        before = await _rooms(room_admin)
        async with httpx.AsyncClient(base_url=backend.url, timeout=10) as http:

            def auth(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}"}

            res = await http.post(
                "/v1/transfers",
                content=b'{"caller": "x",',
                headers={**auth(a_key), "Content-Type": "application/json"},
            )
            assert res.status_code == 400 and res.json()["code"] == "invalid_input"
            res = await http.get("/v1/agents", headers=auth("not-a-key-at-all-000000"))
            assert res.status_code == 401 and res.json()["code"] == "unauthorized"
            assert a_key not in res.text
            res = await http.get("/v1/agents")
            assert res.status_code == 401
            # A caller's key: no agent tokens, no tokens for others, no transfers.
            body = {"room": call.room, "role": "agent"}
            res = await http.post("/v1/tokens", json=body, headers=auth(caller_key))
            assert res.status_code == 403 and res.json()["code"] == "forbidden"
            body = {"room": call.room, "identity": call.a.identity}
            res = await http.post("/v1/tokens", json=body, headers=auth(caller_key))
            assert res.status_code == 403
            res = await http.post(
                "/v1/transfers",
                json={
                    "caller": call.caller.identity,
                    "from_agent": call.caller.identity,
                    "to_agent": call.b.identity,
                    "call_room": call.room,
                },
                headers=auth(caller_key),
            )
            assert res.status_code == 403
            # An agent acting as another agent.
            res = await http.post(
                "/v1/transfers",
                json={
                    "caller": call.caller.identity,
                    "from_agent": call.b.identity,
                    "to_agent": call.a.identity,
                    "call_room": call.room,
                },
                headers=auth(a_key),
            )
            assert res.status_code == 403
            # The caller re-mints its own token (e.g. the handed-out one expired).
            res = await http.post("/v1/tokens", json={"room": call.room}, headers=auth(caller_key))
            assert res.status_code == 200
            grant = res.json()
            assert grant["identity"] == call.caller.identity and grant["room"] == call.room
            assert "secret" not in res.text.lower()
            res = await http.get("/openapi.json")
            assert res.status_code == 200 and "/v1/transfers" in res.json()["paths"]
        # Nothing created, the call room still there. (Compared as differences:
        # a room another test closed may still be going away meanwhile.)
        now = await _rooms(room_admin)
        assert now - before == set() and call.room in now
        assert call.offers.empty()
