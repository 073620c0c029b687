"""Bad input: each a clear 4xx (or the matching error in-process) and nothing changed.

The hostile-body table runs against every route of the real backend under
uvicorn: each body is refused with a 4xx ``{code, message}``, the LiveKit
rooms and the call registry are as before, and the keep-alive connection
that carried it serves the next request.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
import pytest

from softphone.errors import (
    BackendError,
    NotFoundError,
)
from softphone.http_models import MAX_BODY_BYTES, MAX_SEGMENTS, MAX_TEXT
from softphone.media.session import RtcSession
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from tests.transfer.conftest import Call, TransferEnv, ids, open_call, refused

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


async def _rooms(rooms: RoomAdmin) -> set[str]:
    return {r.name for r in await rooms.list_rooms()}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def local_port(res: httpx.Response) -> int:
    """The client-side port of the connection that carried ``res``."""
    sock = res.extensions["network_stream"].get_extra_info("socket")
    return int(sock.getsockname()[1])


def assert_error(res: httpx.Response, status: int | None = None) -> None:
    """A 4xx (``status`` if given) with exactly ``{code, message}``."""
    assert 400 <= res.status_code < 500, (res.status_code, res.text[:300])
    if status is not None:
        assert res.status_code == status, (res.status_code, res.text[:300])
    body = res.json()
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]


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
            return dataclasses.replace(good, **kw)

        await refused(env, a.start_transfer(req(call_room="no-such-room-42")), 404)
        await refused(env, a.start_transfer(req(to_agent="agent-b-999")), 404)
        # The registry knows the call's caller: naming another is bad input.
        await refused(env, a.start_transfer(req(caller="caller-999")), 400)
        err = await refused(env, a.start_transfer(req(to_agent=call.a.identity)), 400)
        assert "oneself" in err.message
        await refused(env, a.start_transfer(req(mode="hot")), 400)  # type: ignore[arg-type]
        await refused(env, a.start_transfer(req(call_room=call.room + "\n")), 400)
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
            res = await http.post(
                "/v1/transfers", content=b'{"caller": "x",', headers={**auth(a_key), **JSON}
            )
            assert res.status_code == 400 and res.json()["code"] == "invalid_input"
            res = await http.get("/v1/agents", headers=auth("not-a-key-at-all-000000"))
            assert res.status_code == 401 and res.json()["code"] == "unauthorized"
            assert a_key not in res.text
            res = await http.get("/v1/agents")
            assert res.status_code == 401
            res = await http.get("/v1/agents", headers={"Authorization": f"Basic {a_key}"})
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


# --- the hostile-body table --------------------------------------------------------------

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the size bound
DEEP_OBJECT = b'{"":' * 50_000 + b"1" + b"}" * 50_000
BIG_INT = b'{"room": ' + b"7" * 5000 + b"}"
BIG_FLOAT = b'{"room": 0.' + b"1" * 5000 + b"}"
# Bodies every route refuses before parsing: (name, body, content type, status).
GENERIC: list[tuple[str, bytes, str, int]] = [
    ("deep array", DEEP_ARRAY, "application/json", 400),
    ("deep object", DEEP_OBJECT, "application/json", 400),
    ("5000-digit int", BIG_INT, "application/json", 400),
    ("5000-digit fraction", BIG_FLOAT, "application/json", 400),
    ("NaN", b'{"room": NaN}', "application/json", 400),
    ("Infinity", b'{"room": -Infinity}', "application/json", 400),
    ("not JSON", b'{"caller": "x",', "application/json", 400),
    ("not UTF-8", b'{"room": "\xff\xfe"}', "application/json", 400),
    ("array", b'[{"room": "x"}]', "application/json", 400),
    ("string", b'"room"', "application/json", 400),
    ("null", b"null", "application/json", 400),
    ("text/plain", b'{"room": "x"}', "text/plain", 400),
    ("form", b"room=x", "application/x-www-form-urlencoded", 400),
    ("oversized", b'{"pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}', "application/json", 413),
]


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str
    who: str  # which party's key


def routes(call: Call, transfer_id: str, call_id: str) -> list[Route]:
    """Every JSON route, with a key that may use it."""
    a, c = call.a.identity, call.caller.identity
    return [
        Route("POST", "/v1/transfers", a),
        Route("GET", f"/v1/transfers/{transfer_id}", a),
        Route("POST", f"/v1/transfers/{transfer_id}/accept", a),
        Route("POST", f"/v1/transfers/{transfer_id}/decline", a),
        Route("POST", f"/v1/transfers/{transfer_id}/complete", a),
        Route("POST", f"/v1/transfers/{transfer_id}/cancel", a),
        Route("POST", "/v1/calls", c),
        Route("GET", "/v1/calls", a),
        Route("POST", f"/v1/calls/{call_id}/end", a),
        Route("GET", "/v1/service", c),
        Route("GET", "/v1/agents", a),
        Route("GET", "/v1/rooms", a),
        Route("POST", "/v1/tokens", c),
        Route("GET", "/health", c),
    ]


def field_cases(call: Call) -> list[tuple[str, str, str, Any]]:
    """(name, path, key's identity, body): bodies that parse but have a bad field."""
    a, b, c = call.a.identity, call.b.identity, call.caller.identity
    good = {"caller": c, "from_agent": a, "to_agent": b, "call_room": call.room}
    seg = {"speaker": c, "start_s": 1.0, "end_s": 2.0, "text": "hello"}

    def xfer(**kw: Any) -> dict[str, Any]:
        return {**good, **kw}

    def with_seg(**kw: Any) -> dict[str, Any]:
        return xfer(transcript=[{**seg, **kw}])

    t = "/v1/transfers"
    cases: list[tuple[str, str, str, Any]] = [
        ("text: 5", t, a, with_seg(text=5)),
        ('start_s: "a"', t, a, with_seg(start_s="a")),
        ('start_s: "1.5" (no coercion)', t, a, with_seg(start_s="1.5")),
        ("speaker: 7", t, a, with_seg(speaker=7)),
        ("speaker: NUL", t, a, with_seg(speaker="caller\x00")),
        ('final: "yes"', t, a, with_seg(final="yes")),
        ("end_s < start_s", t, a, with_seg(start_s=5.0, end_s=1.0)),
        ("start_s < 0", t, a, with_seg(start_s=-1.0)),
        ("start_s 1e400 (inf)", t, a, None),  # raw body below
        ("segment extra field", t, a, with_seg(words=[])),
        ("segment null", t, a, xfer(transcript=[None])),
        ("text too long", t, a, with_seg(text="x" * (MAX_TEXT + 1))),
        ("text with NUL", t, a, with_seg(text="hi\x00there")),
        ("too many segments", t, a, xfer(transcript=[seg] * (MAX_SEGMENTS + 1))),
        ('transcript: "abc"', t, a, xfer(transcript="abc")),
        ("call_id: {x: 1}", t, a, xfer(call_id={"x": 1})),
        ('call_id: "abc" (server ids only)', t, a, xfer(call_id="abc")),
        ("extra field", t, a, xfer(foo="bar")),
        ("room ending in newline", t, a, xfer(call_room=call.room + "\n")),
        ("identity with NUL", t, a, xfer(to_agent=b + "\x00")),
        ("unicode room", t, a, xfer(call_room="räum-☎")),
        ("unicode identity", t, a, xfer(caller="ca\u200bller")),
        ("caller: null", t, a, xfer(caller=None)),
        ("caller missing", t, a, {k: v for k, v in good.items() if k != "caller"}),
        ("caller: 42", t, a, xfer(caller=42)),
        ("caller too long", t, a, xfer(caller="c" * 129)),
        ('mode: "hot"', t, a, xfer(mode="hot")),
        ("summary: 5", t, a, xfer(summary=5)),
        ("summary.reason: 5", t, a, xfer(summary={"reason": 5})),
        ("summary.key_facts: [1]", t, a, xfer(summary={"key_facts": [1]})),
        ("summary extra field", t, a, xfer(summary={"mood": "ok"})),
        ("empty object", t, a, {}),
        ("decline reason: 7", "/v1/transfers/{tid}/decline", a, {"reason": 7}),
        ("decline reason too long", "/v1/transfers/{tid}/decline", a, {"reason": "x" * 1001}),
        ("decline extra field", "/v1/transfers/{tid}/decline", a, {"why": "busy"}),
        ("token room: 5", "/v1/tokens", c, {"room": 5}),
        ("token room null", "/v1/tokens", c, {"room": None}),
        ("token room missing", "/v1/tokens", c, {}),
        ("token room newline", "/v1/tokens", c, {"room": call.room + "\n"}),
        ("token room NUL", "/v1/tokens", c, {"room": "call\x00room"}),
        ("token role: boss", "/v1/tokens", c, {"room": call.room, "role": "boss"}),
        (
            "token mode without supervisor",
            "/v1/tokens",
            c,
            {"room": call.room, "supervisor_mode": "listen"},
        ),
        ("token extra field", "/v1/tokens", c, {"room": call.room, "ttl": 99999}),
        ("call agent: 5", "/v1/calls", c, {"agent": 5}),
        ("call agent newline", "/v1/calls", c, {"agent": a + "\n"}),
        ("call agent missing", "/v1/calls", c, {}),
        ("call with call_id", "/v1/calls", c, {"agent": a, "call_id": {"x": 1}}),
        ("call extra field", "/v1/calls", c, {"agent": a, "room": "mine"}),
        ("call by an agent without caller", "/v1/calls", a, {"agent": a}),
        ("call with an agent as caller", "/v1/calls", a, {"caller": b, "agent": a}),
        ("call with a caller as agent", "/v1/calls", c, {"agent": c}),
    ]
    return cases


async def test_hostile_bodies_on_every_route(
    backend_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    backend = backend_env.backend
    assert backend is not None
    async with open_call(backend_env, prefix="hostile") as call:
        a = call.a_service
        ticket = await a.start_transfer(
            TransferRequest(
                caller=call.caller.identity,
                from_agent=call.a.identity,
                to_agent=call.b.identity,
                call_room=call.room,
            )
        )
        tid = ticket.transfer_id
        # Consulting (an offer would ring out after the suite's short offer
        # timeout while the hostile requests go on under load).
        await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await a.wait_for_phase(tid, ["consulting"])
        [mine] = await backend_env.service_for(call.caller.identity).list_calls(
            identity=call.caller.identity, role="caller"
        )
        before_rooms = await _rooms(room_admin)
        before_calls = await a.list_calls(identity=call.a.identity, role="agent")
        before_snap = await a.status(tid)
        async with httpx.AsyncClient(
            base_url=backend.url, timeout=20, limits=httpx.Limits(max_connections=1)
        ) as http:
            first = await http.get("/health")
            port = local_port(first)

            async def still_usable(what: str) -> None:
                res = await http.get("/v1/service", headers=auth(backend.keys[call.a.identity]))
                assert res.status_code == 200, (what, res.text)
                assert local_port(res) == port, f"connection not kept after {what}"

            for route in routes(call, tid, mine.call_id):
                for name, body, ctype, status in GENERIC:
                    res = await http.request(
                        route.method,
                        route.path,
                        content=body,
                        headers={**auth(backend.keys[route.who]), "Content-Type": ctype},
                    )
                    assert_error(res, status)
                    await still_usable(f"{name} on {route.method} {route.path}")
            # Brackets inside a string are text: not refused for depth.
            deep_in_string = {"room": call.room, "note": "[{" * 10_000}
            res = await http.post(
                "/v1/tokens",
                content=json.dumps(deep_in_string).encode(),
                headers={**auth(backend.keys[call.caller.identity]), **JSON},
            )
            assert_error(res, 400)
            assert "note" in res.json()["message"]  # the extra field, not the depth

            for name, path, who, body in field_cases(call):
                content = (
                    json.dumps(body).encode()
                    if body is not None
                    else json.dumps(
                        {
                            "caller": call.caller.identity,
                            "from_agent": call.a.identity,
                            "to_agent": call.b.identity,
                            "call_room": call.room,
                            "transcript": [
                                {"speaker": "x", "start_s": "@", "end_s": 2.0, "text": "hi"}
                            ],
                        }
                    )
                    .replace('"@"', "1e400")
                    .encode()
                )
                res = await http.post(
                    path.format(tid=tid),
                    content=content,
                    headers={**auth(backend.keys[who]), **JSON},
                )
                assert_error(res, 400)
                assert res.json()["code"] == "invalid_input", name
                assert ":" in res.json()["message"], name
                await still_usable(name)

            # Bad path and query parameters.
            a_auth = auth(backend.keys[call.a.identity])
            for path in (
                "/v1/transfers/%0A",
                "/v1/transfers/a%00b",
                f"/v1/transfers/{'x' * 129}",
                f"/v1/transfers/{tid}?wait_s=nan",
                f"/v1/transfers/{tid}?wait_s=-1",
                f"/v1/transfers/{tid}?wait_s=1e400",
                f"/v1/transfers/{tid}?after_version=abc",
                f"/v1/transfers/{tid}?after_version={'9' * 5000}",
            ):
                res = await http.get(path, headers=a_auth)
                assert_error(res, 400)
                await still_usable(path)
            for path in ("/v1/calls/%0A/end", "/v1/transfers/%00/cancel"):
                res = await http.post(path, headers=a_auth)
                assert_error(res, 400)
            # Speech: hostile uploads and speakers, its own statuses.
            for content, ctype, params, status in (
                (DEEP_ARRAY, "application/json", {}, 415),
                (BIG_INT, "audio/wav", {}, 415),
                (b"RIFF....WAVEjunk" * 10, "audio/wav", {"speaker": "a\n"}, 400),
                (b"RIFF....WAVEjunk" * 10, "audio/wav", {"speaker": "a\x00"}, 400),
                (b"", "audio/wav", {}, 400),
            ):
                res = await http.post(
                    "/v1/speech",
                    params=params,
                    content=content,
                    headers={**a_auth, "Content-Type": ctype},
                )
                assert_error(res, status)
                await still_usable("speech")

        # Nothing changed: rooms, calls, the transfer.
        now = await _rooms(room_admin)
        assert {call.room, ticket.new_room} <= now
        # No room of this call's parties appeared (another test's transfer room
        # being closed late may come and go meanwhile: not ours to judge).
        ours = {call.caller.identity, call.a.identity, call.b.identity}
        for room in now - before_rooms:
            try:
                people = {p.identity for p in await room_admin.list_participants(room)}
            except NotFoundError:
                continue  # closed meanwhile
            assert not people & ours, room
        after_calls = await a.list_calls(identity=call.a.identity, role="agent")
        assert [c.call_id for c in after_calls] == [c.call_id for c in before_calls]
        after_snap = await a.status(tid)
        assert (after_snap.phase, after_snap.version) == (before_snap.phase, before_snap.version)
        assert call.offers.qsize() == 0  # no offer but the one real one
        await a.cancel(tid, agent=call.a.identity)


async def test_call_routes_and_roles(backend_env: TransferEnv, room_admin: RoomAdmin) -> None:
    backend = backend_env.backend
    assert backend is not None
    _, c_id, a_id, b_id = ids("calls")
    key = backend.keys
    async with httpx.AsyncClient(base_url=backend.url, timeout=20) as http:
        # Who may create which call.
        res = await http.post("/v1/calls", json={"agent": a_id}, headers=auth(key["supervisor-0"]))
        assert_error(res, 403)
        res = await http.post(
            "/v1/calls", json={"caller": "caller-398", "agent": a_id}, headers=auth(key[c_id])
        )
        assert_error(res, 403)
        res = await http.post("/v1/calls", json={"agent": a_id}, headers=auth(key["gateway-0"]))
        assert_error(res, 400)  # a service names the caller
        res = await http.post(
            "/v1/calls", json={"caller": c_id, "agent": a_id}, headers=auth(key["gateway-0"])
        )
        assert res.status_code == 201, res.text
        ticket = res.json()
        room = ticket["call"]["room"]
        assert ticket["call"]["caller"] == c_id and ticket["call"]["agent"] == a_id
        assert ticket["token"]["room"] == room
        # One active call per caller.
        res = await http.post("/v1/calls", json={"agent": b_id}, headers=auth(key[c_id]))
        assert_error(res, 409)
        # Listing: its own calls; every call for a supervisor; rooms for supervisors only.
        res = await http.get("/v1/calls", headers=auth(key[c_id]))
        assert res.status_code == 200 and [c["room"] for c in res.json()] == [room]
        res = await http.get("/v1/calls", headers=auth(key[b_id]))
        assert res.status_code == 200 and room not in {c["room"] for c in res.json()}
        res = await http.get("/v1/calls", headers=auth(key["supervisor-0"]))
        assert res.status_code == 200 and room in {c["room"] for c in res.json()}
        res = await http.get("/v1/calls", headers=auth(key["gateway-0"]))
        assert_error(res, 403)
        for who in (a_id, c_id, "gateway-0"):
            assert_error(await http.get("/v1/rooms", headers=auth(key[who])), 403)
        res = await http.get("/v1/rooms", headers=auth(key["supervisor-0"]))
        assert res.status_code == 200 and isinstance(res.json(), list)
        assert_error(await http.get("/v1/agents", headers=auth(key[c_id])), 403)
        # Tokens: only for parties; the same 404 whether or not the room exists.
        res = await http.post("/v1/tokens", json={"room": room}, headers=auth(key[a_id]))
        assert res.status_code == 200 and res.json()["room"] == room
        for name in (room, "call-does-not-exist-0"):
            res = await http.post("/v1/tokens", json={"room": name}, headers=auth(key[b_id]))
            assert_error(res, 404)
        res = await http.post("/v1/tokens", json={"room": room}, headers=auth(key["gateway-0"]))
        assert_error(res, 403)
        res = await http.post(
            "/v1/tokens",
            json={"room": room, "role": "supervisor", "supervisor_mode": "whisper"},
            headers=auth(key["supervisor-0"]),
        )
        assert res.status_code == 200, res.text
        res = await http.get("/v1/service", headers=auth(key[c_id]))
        assert res.status_code == 200 and res.json()["livekit_url"] == backend_env.url
        # Ending: parties only.
        call_id = ticket["call"]["call_id"]
        assert_error(await http.post(f"/v1/calls/{call_id}/end", headers=auth(key[b_id])), 404)
        assert_error(await http.post("/v1/calls/nope/end", headers=auth(key[c_id])), 404)
        res = await http.post(f"/v1/calls/{call_id}/end", headers=auth(key[c_id]))
        assert res.status_code == 200 and res.json()["ended_at"] is not None
        res = await http.get("/v1/calls", headers=auth(key[c_id]))
        assert res.status_code == 200 and res.json() == []
    # The typed client does the same.
    client = backend.client_for(c_id)
    try:
        info = await client.service_info()
        assert info.livekit_url == backend_env.url and info.command_key
        ticket2 = await client.create_call(caller=c_id, agent=b_id, requester=c_id)
        assert ticket2.call.caller == c_id and ticket2.token.identity == c_id
        assert [c.call_id for c in await client.list_calls(identity=c_id, role="caller")] == [
            ticket2.call.call_id
        ]
        ended = await client.end_call(ticket2.call.call_id, identity=c_id)
        assert not ended.active
        with pytest.raises(BackendError) as info_err:
            await client.create_call(caller=c_id, agent="agent\n", requester=c_id)
        assert info_err.value.status == 400 and info_err.value.code == "invalid_input"
    finally:
        await client.aclose()
