"""Commands only from the service, and least-privilege grants, against hostile participants.

An attacker here is a real participant with a real token for the room (as
someone who got hold of a caller's or an agent's token would be): it sends
the service's RPCs and data messages itself. The apps must refuse all of it
with no effect; only what the service signed, sent from the server side and
naming this deployment's LiveKit URL is obeyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from livekit import rtc

from softphone.errors import MediaError, SoftphoneError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE
from softphone.protocol import (
    RPC_JOIN,
    RPC_MOVE,
    RPC_OFFER,
    RPC_STANDBY,
    RPC_WITHDRAW,
    STATUS_TOPIC,
    TokenGrant,
)
from softphone.server.command_signer import CommandSigner
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.server.transfer_orchestrator import TransferOrchestrator
from tests.transfer.conftest import A_HZ, HEARD, Call, TransferEnv, eventually, hears, open_call

pytestmark = pytest.mark.integration

REFUSED = "not from the service"


@contextlib.asynccontextmanager
async def intruder(
    env: TransferEnv, room: str, *, role: str = "caller", identity: str = ""
) -> AsyncIterator[RtcSession]:
    """A participant in ``room`` with a real token of ``role``."""
    identity = identity or f"intruder-{uuid.uuid4().hex[:8]}"
    token = env.minter.mint(role=role, identity=identity, room=room).token  # type: ignore[arg-type]
    async with RtcSession(url=env.url, token=token) as session:
        yield session


def foreign_grant(env: TransferEnv, identity: str) -> TokenGrant:
    """A working grant for a room of the attacker's, at a URL that is not the deployment's.

    ``localhost`` reaches the same test server, so an app that obeyed would
    really move (a dead URL would fail to connect and prove nothing).
    """
    room = f"evil-{uuid.uuid4().hex[:8]}"
    issued = env.minter.mint(role="caller", identity=identity, room=room)
    url = env.url.replace("127.0.0.1", "localhost")
    assert url != env.url
    return TokenGrant(issued.token, identity, room, url, issued.expires_at)


def forged(method: str, to: str, room: str, body: dict[str, object]) -> str:
    """A command in the service's format, signed with a key that is not the service's."""
    return CommandSigner().sign(method, to=to, room=room, body=body)


async def assert_refused(sender: RtcSession, to: str, method: str, payload: str) -> None:
    with pytest.raises(MediaError, match=REFUSED):
        await sender.perform_rpc(to, method, payload, timeout_s=5.0)


async def caller_stays_with_a(call: Call, room_admin: RoomAdmin) -> None:
    """The caller is still in R1, on its first connection, hearing A."""
    assert call.mover is not None
    assert call.mover.session is call.caller_session and not call.mover.moves
    assert call.caller_session.connected
    who = {p.identity for p in await room_admin.list_participants(call.room)}
    assert call.caller.identity in who
    evil = [r.name for r in await room_admin.list_rooms() if r.name.startswith("evil-")]
    for name in evil:
        assert call.caller.identity not in {
            p.identity for p in await room_admin.list_participants(name)
        }
    assert await hears(call.caller_session, call.a.identity, A_HZ) > HEARD


def signer_of(env: TransferEnv, identity: str) -> CommandSigner:
    service = env.service_for(identity)
    assert isinstance(service, TransferOrchestrator)
    return service.signer


async def test_a_participant_cannot_move_the_caller_to_another_server(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    async with open_call(transfer_env, prefix="hostile-move") as call:
        caller = call.caller.identity
        grant = foreign_grant(transfer_env, caller).to_dict()
        async with intruder(transfer_env, call.room) as other:
            # The old wire format (a bare grant), and the new one signed with
            # the attacker's own key.
            for method in (RPC_MOVE, RPC_STANDBY):
                await assert_refused(other, caller, method, json.dumps(grant))
                await assert_refused(
                    other, caller, method, forged(method, caller, call.room, grant)
                )
            await asyncio.sleep(0.5)
            assert call.mover is not None and not call.mover.standby(grant["room"])
            await caller_stays_with_a(call, room_admin)


async def test_a_signed_move_naming_another_server_is_refused(
    embedded_env: TransferEnv, room_admin: RoomAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent as the service sends it (server side, its key): only the URL is wrong."""
    async with open_call(embedded_env, prefix="foreign-url") as call:
        caller, a_id = call.caller.identity, call.a.identity
        signer = signer_of(embedded_env, a_id)
        grant = foreign_grant(embedded_env, caller)
        payload = signer.sign(RPC_MOVE, to=caller, room=call.room, body=grant.to_dict())
        with pytest.raises(SoftphoneError):  # the server API says only "internal"
            await room_admin.perform_rpc(call.room, caller, RPC_MOVE, payload)
        refusals = [r for r in caplog.records if r.name == "softphone.client.commands"]
        assert [r.getMessage() for r in refusals] == [
            "command grant refused: names another LiveKit server"
        ]
        await caller_stays_with_a(call, room_admin)
        # The same instruction naming the deployment's own URL is obeyed: the
        # refusal above was the URL's.
        own = TokenGrant(grant.token, caller, grant.room, embedded_env.url, grant.expires_at)
        payload = signer.sign(RPC_MOVE, to=caller, room=call.room, body=own.to_dict())
        assert await room_admin.perform_rpc(call.room, caller, RPC_MOVE, payload) == "moved"
        assert call.mover is not None
        await eventually(lambda: asyncio.sleep(0, call.mover.session.room_name == grant.room))


async def test_a_caller_cannot_end_agent_as_consult_with_a_status_message(
    transfer_env: TransferEnv,
) -> None:
    async with open_call(transfer_env, prefix="hostile-status") as call:
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
        offer = await call.next_offer()
        await call.b_lobby.accept(offer.transfer_id)
        snap = await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        await eventually(lambda: asyncio.sleep(0, call.a_call.consult is not None))
        a_id = call.a.identity
        for phase in ("returned", "ended"):
            fake = {**snap.to_dict(), "phase": phase, "version": snap.version + 10}
            fake["reason"] = {"code": "cancelled", "text": ""}
            for payload in (
                json.dumps(fake),
                forged(STATUS_TOPIC, a_id, call.room, fake),
            ):
                await call.caller_session.send_data(
                    payload, topic=STATUS_TOPIC, destination_identities=[a_id]
                )
        await asyncio.sleep(1.0)
        assert call.a_call.last is not None and call.a_call.last.phase == "consulting"
        assert call.a_call.session.muted, "A's voice must not reach the caller on hold"
        assert call.a_call.consult is not None and call.a_call.consult.connected
        await call.a_service.cancel(ticket.transfer_id, agent=a_id)
        # The service's own status still gets through.
        await eventually(lambda: asyncio.sleep(0, not call.a_call.session.muted))


async def test_a_lobby_participant_cannot_offer_or_withdraw(transfer_env: TransferEnv) -> None:
    async with open_call(transfer_env, prefix="hostile-offer") as call:
        b_id = call.b.identity
        invented = {
            "transfer_id": "f" * 16,
            "from_agent": call.a.identity,
            "caller": call.caller.identity,
            "mode": "warm",
            "new_room": f"evil-{uuid.uuid4().hex[:8]}",
            "summary": None,
        }
        async with intruder(transfer_env, transfer_env.lobby, role="agent") as other:
            await assert_refused(other, b_id, RPC_OFFER, json.dumps(invented))
            await assert_refused(
                other, b_id, RPC_OFFER, forged(RPC_OFFER, b_id, transfer_env.lobby, invented)
            )
            # A real offer stands against a participant's withdrawal.
            ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=b_id)
            offer = await call.next_offer()
            assert offer.transfer_id == ticket.transfer_id, "no invented offer came first"
            withdraw = {"transfer_id": ticket.transfer_id, "reason": "cancelled"}
            await assert_refused(other, b_id, RPC_WITHDRAW, json.dumps(withdraw))
            await asyncio.sleep(0.3)
            assert call.withdrawn == [] and ticket.transfer_id in call.b_lobby.offers
            assert call.offers.empty()
            await call.b_lobby.decline(ticket.transfer_id, "test over")


async def test_a_participant_named_like_the_service_is_refused_even_with_signed_commands(
    embedded_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    """Server-initiated RPCs carry a generated UUID as caller; a participant may pick one too.

    Every command below is signed by the service itself, for its recipient
    and room (a captured one, say): the participant check alone refuses it.
    """
    async with open_call(embedded_env, prefix="uuid") as call:
        caller, b_id, a_id = call.caller.identity, call.b.identity, call.a.identity
        signer = signer_of(embedded_env, a_id)
        own = embedded_env.minter.mint(role="caller", identity=caller, room="elsewhere")
        grant = TokenGrant(own.token, caller, "elsewhere", embedded_env.url, own.expires_at)
        async with intruder(embedded_env, call.room, identity=str(uuid.uuid4())) as other:
            for method in (RPC_MOVE, RPC_STANDBY):
                payload = signer.sign(method, to=caller, room=call.room, body=grant.to_dict())
                await assert_refused(other, caller, method, payload)
            await caller_stays_with_a(call, room_admin)
        lobby = embedded_env.lobby
        offer = {
            "transfer_id": "e" * 16,
            "from_agent": a_id,
            "caller": caller,
            "mode": "warm",
            "new_room": "elsewhere",
            "summary": None,
        }
        async with intruder(embedded_env, lobby, role="agent", identity=str(uuid.uuid4())) as other:
            await assert_refused(
                other, b_id, RPC_OFFER, signer.sign(RPC_OFFER, to=b_id, room=lobby, body=offer)
            )
            await asyncio.sleep(0.3)
            assert call.offers.empty()
        ticket = await call.a_call.transfer(caller=caller, to_agent=b_id)
        await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        r2 = ticket.new_room
        b_grant = embedded_env.minter.mint(role="agent", identity=b_id, room=call.room)
        join = TokenGrant(b_grant.token, b_id, call.room, embedded_env.url, b_grant.expires_at)
        async with intruder(embedded_env, r2, role="agent", identity=str(uuid.uuid4())) as other:
            payload = signer.sign(RPC_JOIN, to=b_id, room=r2, body=join.to_dict())
            await assert_refused(other, b_id, RPC_JOIN, payload)
            await asyncio.sleep(0.3)
            assert call.b_lobby.call_session is not None
            assert call.b_lobby.call_session.room_name == r2
            who = {p.identity for p in await room_admin.list_participants(call.room)}
            assert b_id not in who
        await call.a_service.cancel(ticket.transfer_id, agent=a_id)


# ---- grants ------------------------------------------------------------------------


async def _receives(session: RtcSession, topic: str, timeout_s: float = 1.5) -> bool:
    got: asyncio.Queue[object] = asyncio.Queue()
    session.on("data", lambda m: got.put_nowait(m) if m.topic == topic else None)
    try:
        await asyncio.wait_for(got.get(), timeout_s)
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("mode", ["listen", "whisper"])
async def test_a_supervisor_sends_no_data(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str, mode: str
) -> None:
    agent = minter.mint(role="agent", identity="agent-d", room=room_name)
    sup = minter.mint(
        role="supervisor",
        identity="sup-d",
        room=room_name,
        supervisor_mode=mode,  # type: ignore[arg-type]
    )
    async with (
        RtcSession(url=livekit_server.url, token=agent.token) as sa,
        RtcSession(url=livekit_server.url, token=sup.token) as ss,
    ):
        receiving = asyncio.ensure_future(_receives(sa, STATUS_TOPIC))
        await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):  # refused by the SDK or dropped by the server
            await ss.send_data(b"{}", topic=STATUS_TOPIC, destination_identities=["agent-d"])
        assert not await receiving
        # An agent's data does arrive: the check above can see a message.
        receiving = asyncio.ensure_future(_receives(ss, "probe"))
        await asyncio.sleep(0.2)
        await sa.send_data(b"{}", topic="probe")
        assert await receiving


async def test_a_listening_supervisor_cannot_speak_and_a_whispering_one_can(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    for mode, allowed in (("listen", False), ("whisper", True)):
        sup = minter.mint(
            role="supervisor",
            identity=f"sup-{mode}",
            room=room_name,
            supervisor_mode=mode,  # type: ignore[arg-type]
        )
        async with RtcSession(url=livekit_server.url, token=sup.token) as ss:
            source = rtc.AudioSource(SAMPLE_RATE, 1)
            if allowed:
                await ss.publish_audio(source)
                assert ss.publishing
            else:
                with pytest.raises(MediaError):
                    await ss.publish_audio(source)


async def test_a_caller_cannot_change_its_attributes(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    caller = minter.mint(role="caller", identity="caller-attr", room=room_name)
    async with RtcSession(url=livekit_server.url, token=caller.token) as sc:
        with contextlib.suppress(Exception):  # refused by the server
            await asyncio.wait_for(sc.set_attributes({"role": "agent", "presence": "x"}), 3.0)
        await asyncio.sleep(0.5)
        (info,) = await room_admin.list_participants(room_name)
        assert dict(info.attributes) == {"role": "caller"}


async def test_a_standby_caller_hears_nothing_and_sends_no_data(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    agent = minter.mint(role="agent", identity="agent-sb", room=room_name)
    standby = minter.mint(role="caller", identity="caller-sb", room=room_name, standby=True)
    async with RtcSession(url=livekit_server.url, token=agent.token) as sa:
        await sa.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1))
        async with RtcSession(url=livekit_server.url, token=standby.token) as sc:
            with pytest.raises(MediaError):
                await sc.wait_for_audio("agent-sb", timeout_s=1.5)
            receiving = asyncio.ensure_future(_receives(sa, STATUS_TOPIC))
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):
                await sc.send_data(b"{}", topic=STATUS_TOPIC)
            assert not await receiving
