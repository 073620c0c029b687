"""Room lifecycle, participants, data and RPC through the real server API."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import rtc

from softphone.config import Secret
from softphone.errors import LiveKitError, NotFoundError, ValidationError
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.media.session import DataMessage, Disconnected, RtcSession
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter

pytestmark = pytest.mark.integration


async def _next(session: RtcSession, event: str, within_s: float = 10.0) -> object:
    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    off = session.on(event, lambda payload: fut.done() or fut.set_result(payload))  # type: ignore[arg-type]
    try:
        return await asyncio.wait_for(fut, within_s)
    finally:
        off()


async def test_room_lifecycle(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    created = await room_admin.create_room(
        room_name, empty_timeout_s=60, departure_timeout_s=5, metadata='{"v":1}'
    )
    assert (created.name, created.metadata) == (room_name, '{"v":1}')
    assert created.empty_timeout_s == 60 and created.departure_timeout_s == 5
    assert room_name in {r.name for r in await room_admin.list_rooms()}

    token = minter.mint(role="caller", identity="caller-l", room=room_name)
    async with RtcSession(url=livekit_server.url, token=token.token) as session:
        assert session.room.metadata == '{"v":1}'
        changed = asyncio.ensure_future(_next(session, "room_metadata_changed"))
        await asyncio.sleep(0)
        await room_admin.update_room_metadata(room_name, '{"v":2}')
        assert await changed == '{"v":2}'
        assert (await room_admin.get_room(room_name)).metadata == '{"v":2}'

        who = await room_admin.get_participant(room_name, "caller-l")
        assert who.identity == "caller-l" and who.attributes.get("role") == "caller"

        gone = asyncio.ensure_future(_next(session, "disconnected"))
        await asyncio.sleep(0)
        await room_admin.remove_participant(room_name, "caller-l")
        result = await gone
        assert isinstance(result, Disconnected) and result.reason == "removed"

    with pytest.raises(NotFoundError):
        await room_admin.get_participant(room_name, "caller-l")
    await room_admin.delete_room(room_name)
    assert room_name not in {r.name for r in await room_admin.list_rooms()}
    with pytest.raises(NotFoundError):
        await room_admin.get_room(room_name)
    await room_admin.delete_room(room_name)  # deleting twice is harmless


async def test_deleting_a_room_disconnects_its_participants(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    token = minter.mint(role="agent", identity="agent-d", room=room_name)
    async with RtcSession(url=livekit_server.url, token=token.token) as session:
        gone = asyncio.ensure_future(_next(session, "disconnected"))
        await asyncio.sleep(0)
        await room_admin.delete_room(room_name)
        result = await gone
        assert isinstance(result, Disconnected) and result.reason == "room_deleted"


async def test_attributes_data_to_chosen_identities_and_rpc(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    ta = minter.mint(role="agent", identity="agent-1", room=room_name)
    tb = minter.mint(role="agent", identity="agent-2", room=room_name)
    async with (
        RtcSession(url=livekit_server.url, token=ta.token) as a,
        RtcSession(url=livekit_server.url, token=tb.token) as b,
    ):
        got_a: list[DataMessage] = []
        got_b: list[DataMessage] = []
        a.on("data", got_a.append)
        b.on("data", got_b.append)
        # Data for a participant whose data channel is not open yet is
        # dropped by the server, so it is sent again until it arrives.
        for attempt in range(100):
            if got_b:
                break
            if attempt % 20 == 0:
                await room_admin.send_data(
                    room_name, {"hello": 1}, topic="t", destination_identities=["agent-2"]
                )
            await asyncio.sleep(0.05)
        assert got_b and all(m.json() == {"hello": 1} and m.topic == "t" for m in got_b)
        await asyncio.sleep(0.3)
        assert got_a == []

        # A server-side update reaches the participant itself (livekit-server
        # 1.13.5 does not forward it to the others; presence is therefore set
        # by each agent's own client, which everyone sees).
        own = asyncio.ensure_future(_next(b, "participant_attributes_changed"))
        await asyncio.sleep(0)
        info = await room_admin.update_participant(
            room_name, "agent-2", attributes={"presence": "busy"}
        )
        assert info.attributes["presence"] == "busy"
        assert (await own).attributes["presence"] == "busy"  # type: ignore[attr-defined]
        seen = asyncio.ensure_future(_next(a, "participant_attributes_changed"))
        await asyncio.sleep(0)
        await b.set_attributes({"presence": "away"})
        change = await seen
        assert change.identity == "agent-2" and change.attributes["presence"] == "away"  # type: ignore[attr-defined]
        assert (await room_admin.get_participant(room_name, "agent-2")).attributes[
            "presence"
        ] == "away"

        async def echo(data: rtc.RpcInvocationData) -> str:
            return json.dumps({"echo": json.loads(data.payload), "caller": data.caller_identity})

        b.register_rpc("echo", echo)
        answer = await room_admin.perform_rpc(room_name, "agent-2", "echo", {"x": 1})
        assert json.loads(answer)["echo"] == {"x": 1}
        assert json.loads(await a.perform_rpc("agent-2", "echo", {"y": 2}))["caller"] == "agent-1"
        with pytest.raises(LiveKitError):
            await room_admin.perform_rpc(
                room_name, "agent-2", "no-such-method", response_timeout_s=3
            )


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda r: r.create_room(""), "room"),
        (lambda r: r.create_room("a b"), "room"),
        (lambda r: r.create_room("x" * 200), "room"),
        (lambda r: r.create_room("ok", metadata="m" * 70000), "metadata"),
        (lambda r: r.list_participants("../etc"), "room"),
        (lambda r: r.remove_participant("ok", "who?"), "identity"),
        (lambda r: r.send_data("ok", b"x", topic=""), "topic"),
        (lambda r: r.send_data("ok", b"x" * 20000, topic="t"), "payload"),
        (
            lambda r: r.send_data("ok", b"x", topic="t", destination_identities=["a b"]),
            "destination_identities",
        ),
        (lambda r: r.perform_rpc("ok", "agent", ""), "method"),
    ],
)
async def test_bad_names_are_rejected_before_any_call(call, field: str) -> None:
    # A port nothing listens on: if a request went out, this would be a LiveKitError.
    async with RoomAdmin(
        url=f"http://127.0.0.1:{free_port()}", api_key="k", api_secret=Secret("s" * 32)
    ) as admin:
        with pytest.raises(ValidationError) as info:
            await call(admin)
        assert info.value.field == field


async def test_unreachable_server_is_a_retryable_error() -> None:
    async with RoomAdmin(
        url=f"http://127.0.0.1:{free_port()}",
        api_key="k",
        api_secret=Secret("s" * 32),
        timeout_s=2,
    ) as admin:
        with pytest.raises(LiveKitError) as info:
            await admin.list_rooms()
        assert info.value.retryable
        assert "s" * 32 not in str(info.value)
