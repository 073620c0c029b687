"""Tokens against the real server: one room, one identity, expiry, hidden supervisors."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json

import pytest
from livekit import api, rtc

from softphone.errors import MediaError, ValidationError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter

pytestmark = pytest.mark.integration


def _tamper(token: str, **claims: object) -> str:
    """Change claims in a token's payload, keeping its (now wrong) signature."""
    header, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for key, value in claims.items():
        if key == "room":
            data["video"]["room"] = value
        else:
            data[key] = value
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{sig}"


async def test_caller_token_joins_only_its_own_room(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    other = room_name + "-other"
    await room_admin.create_room(other)
    issued = minter.mint(role="caller", identity="caller-x", room=room_name)
    async with RtcSession(url=livekit_server.url, token=issued.token) as session:
        assert session.room_name == room_name
        assert session.identity == "caller-x"
        assert [p.identity for p in await room_admin.list_participants(room_name)] == ["caller-x"]
        assert await room_admin.list_participants(other) == []
    forged = _tamper(issued.token, room=other)
    with pytest.raises(MediaError):
        await RtcSession(url=livekit_server.url, token=forged, connect_timeout_s=5).connect()
    assert await room_admin.list_participants(other) == []


async def test_token_cannot_act_as_another_identity(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    issued = minter.mint(role="caller", identity="caller-y", room=room_name)
    forged = _tamper(issued.token, sub="agent-a")
    with pytest.raises(MediaError):
        await RtcSession(url=livekit_server.url, token=forged, connect_timeout_s=5).connect()
    await room_admin.create_room(room_name)
    assert await room_admin.list_participants(room_name) == []


async def test_expired_token_is_refused(
    livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> None:
    issued = minter.mint(role="caller", identity="caller-z", room="expiring", ttl_s=1)
    await asyncio.sleep(1.2)
    assert issued.expired(margin_s=0)
    # The server allows one minute of clock skew, so a token that expired two
    # minutes ago (signed with the server's real key) is what it must refuse.
    stale = (
        api.AccessToken(livekit_server.api_key, livekit_server.api_secret.get())
        .with_identity("caller-z")
        .with_grants(api.VideoGrants(room_join=True, room="expiring"))
        .with_ttl(datetime.timedelta(seconds=-120))
        .to_jwt()
    )
    with pytest.raises(MediaError):
        await RtcSession(url=livekit_server.url, token=stale, connect_timeout_s=5).connect()


async def test_listening_supervisor_is_hidden_and_cannot_publish(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    agent = minter.mint(role="agent", identity="agent-s", room=room_name)
    sup = minter.mint(role="supervisor", identity="sup-1", room=room_name)
    async with RtcSession(url=livekit_server.url, token=agent.token) as sa:
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        await sa.publish_audio(source)
        async with RtcSession(url=livekit_server.url, token=sup.token) as ss:
            # The supervisor hears the agent...
            audio = await ss.wait_for_audio("agent-s")
            assert audio.identity == "agent-s"
            # ...the agent does not see the supervisor; the server does, as hidden.
            await asyncio.sleep(0.5)
            assert "sup-1" not in sa.remote_identities()
            infos = {p.identity: p for p in await room_admin.list_participants(room_name)}
            assert infos["sup-1"].hidden and not infos["agent-s"].hidden
            with pytest.raises(MediaError):
                await ss.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1))


async def test_standby_caller_is_deaf_and_unheard_until_given_the_caller_permission(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    agent = minter.mint(role="agent", identity="agent-b", room=room_name)
    standby = minter.mint(role="caller", identity="caller-w", room=room_name, standby=True)
    async with RtcSession(url=livekit_server.url, token=agent.token) as sa:
        await sa.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1))
        async with RtcSession(url=livekit_server.url, token=standby.token) as sc:
            # The caller's app publishes its mic at once, muted and for nobody.
            sc.restrict_subscribers([])
            sc.set_muted(True)
            await sc.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1))
            await asyncio.sleep(0.5)
            assert not any(
                pub.subscribed
                for p in sc.room.remote_participants.values()
                for pub in p.track_publications.values()
            ), "a standby caller must hear nothing"
            with pytest.raises(MediaError):
                await sa.wait_for_audio("caller-w", timeout_s=1.0)
            infos = {p.identity: p for p in await room_admin.list_participants(room_name)}
            assert infos["caller-w"].audio_tracks == 1
            assert infos["caller-w"].unmuted_audio_tracks == 0
            # Promoted through the server API: the app is told (that is its
            # cue to unmute and open up), then heard and hearing, on the same
            # connection.
            told: asyncio.Queue[bool] = asyncio.Queue()
            sc.on("may_listen", told.put_nowait)
            await room_admin.set_permission(room_name, "caller-w", TokenMinter.permission("caller"))
            assert await asyncio.wait_for(told.get(), 5) is True
            sc.set_muted(False)
            sc.restrict_subscribers(None)
            assert (await sc.wait_for_audio("agent-b")).identity == "agent-b"
            assert (await sa.wait_for_audio("caller-w")).identity == "caller-w"
            infos = {p.identity: p for p in await room_admin.list_participants(room_name)}
            assert not infos["caller-w"].hidden and infos["caller-w"].unmuted_audio_tracks == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": "admin", "identity": "a", "room": "r"}, "role"),
        ({"role": "caller", "identity": "", "room": "r"}, "identity"),
        ({"role": "caller", "identity": "bad id", "room": "r"}, "identity"),
        ({"role": "caller", "identity": "a", "room": "r/../x"}, "room"),
        ({"role": "caller", "identity": "a", "room": "r" * 129}, "room"),
        ({"role": "caller", "identity": "a", "room": "r", "ttl_s": 0}, "ttl_s"),
        (
            {"role": "supervisor", "identity": "a", "room": "r", "supervisor_mode": "x"},
            "supervisor_mode",
        ),
        ({"role": "agent", "identity": "a", "room": "r", "standby": True}, "standby"),
    ],
)
def test_minting_rejects_bad_input(minter: TokenMinter, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        minter.mint(**kwargs)
    assert info.value.field == field
