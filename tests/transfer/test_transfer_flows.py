"""Warm transfer end to end: real server, real participants with real audio.

Each test runs against the embedded service and the backend under uvicorn.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import rtc

from softphone.client.commands import CommandGuard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import RtcSession
from softphone.protocol import RPC_JOIN, TokenGrant
from softphone.server.room_admin import RoomAdmin
from tests.transfer.conftest import (
    A_HZ,
    B_HZ,
    CALLER_HZ,
    HEARD,
    HOLD_HZ,
    TransferEnv,
    eventually,
    hears,
    hears_track,
    open_call,
    room_exists,
    silent,
)

pytestmark = pytest.mark.integration

TRANSCRIPT = (
    TranscriptSegment("caller", 0.0, 3.0, "Hi, my order 12345 arrived broken."),
    TranscriptSegment("agent", 3.0, 6.0, "Sorry to hear that, I will get you to returns."),
)


async def test_warm_transfer_happy_path(transfer_env: TransferEnv, room_admin: RoomAdmin) -> None:
    async with open_call(transfer_env, prefix="warm") as call:
        caller = call.caller.identity
        a_service = call.a_service
        ticket = await call.a_call.transfer(
            caller=caller, to_agent=call.b.identity, transcript=TRANSCRIPT
        )
        assert ticket.transfer.phase == "offering"
        # B sees the summary before joining.
        offer = await call.next_offer()
        assert offer.transfer_id == ticket.transfer_id
        assert offer.summary is not None and offer.summary.reason
        assert not offer.summary.fallback
        # ...and the transcript so far.
        assert [(s.speaker, s.text) for s in offer.transcript] == [
            (s.speaker, s.text) for s in TRANSCRIPT
        ]
        assert offer.transcript_omitted == 0
        b_session = await call.b_lobby.accept(offer.transfer_id)
        snap = await a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        # On hold (offering and consulting): the caller hears the hold tone, not A.
        if not transfer_env.service_holds:
            # A's app plays it (the backend's callers are apps), on a track
            # only the caller may receive.
            assert (
                await hears_track(call.caller_session, call.a.identity, HOLD_TRACK, HOLD_HZ) > HEARD
            )
        else:
            # The service's own hold participant (for callers without an app).
            hold = f"hold-{ticket.transfer_id}"
            assert await hears(call.caller_session, hold, HOLD_HZ) > HEARD
            # ...which is for the caller only: A, consulting meanwhile, does not get it.
            assert hold in call.a_call.session.remote_identities()
            assert await silent(call.a_call.session, hold, HOLD_HZ)
        assert call.a_call.session.muted
        assert await silent(call.caller_session, call.a.identity, A_HZ)
        meta = json.loads(b_session.room.metadata)
        assert meta["summary"]["reason"] == offer.summary.reason
        # Consult leg: A and B hear each other in R2.
        await eventually(lambda: asyncio.sleep(0, call.a_call.consult is not None))
        assert call.a_call.consult is not None
        assert await hears(b_session, call.a.identity, A_HZ) > HEARD
        # The caller's app waits in R2 on standby: its mic muted and kept from
        # everyone, hearing nothing.
        await eventually(lambda: _on_standby(room_admin, ticket.new_room, caller))
        assert await silent(b_session, caller, CALLER_HZ)
        # Only B, who takes the call, is let subscribe to that muted track
        # already, so going live needs no negotiation; A is not.
        await eventually(lambda: asyncio.sleep(0, _subscribed_to(b_session, caller)))
        assert not _subscribed_to(call.a_call.consult, caller)
        assert call.mover is not None
        standby = call.mover.standby(ticket.new_room)
        assert standby is not None
        assert not any(
            pub.subscribed
            for p in standby.room.remote_participants.values()
            for pub in p.track_publications.values()
        ), "a caller on standby must not hear the consult"
        snap = await a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert snap.phase == "completed"
        assert snap.strategy == "move_caller"
        assert call.mover.session is standby, "the move should reuse the standby connection"
        assert [t.phase for t in snap.timeline] == [
            "preparing",
            "offering",
            "consulting",
            "completing",
            "completed",
        ]
        assert call.mover is not None and call.mover.session.room_name == ticket.new_room
        # The caller and B hear each other; A is in neither room; R1 is gone.
        assert await hears(b_session, caller, CALLER_HZ) > HEARD
        assert await hears(call.mover.session, call.b.identity, B_HZ) > HEARD
        r2 = {p.identity for p in await room_admin.list_participants(ticket.new_room)}
        assert call.a.identity not in r2 and {caller, call.b.identity} <= r2
        await eventually(lambda: _gone(room_admin, call.room))


async def _gone(rooms: RoomAdmin, name: str) -> bool:
    return not await room_exists(rooms, name)


async def _completes_without_consult(env: TransferEnv, rooms: RoomAdmin, mode: Mode) -> None:
    async with open_call(env, prefix=mode) as call:
        ticket = await call.a_call.transfer(
            caller=call.caller.identity, to_agent=call.b.identity, mode=mode, transcript=TRANSCRIPT
        )
        assert ticket.consult_token is None
        offer = await call.next_offer()
        assert (offer.summary is None) == (mode == "cold")
        b_session = await call.b_lobby.accept(offer.transfer_id)
        snap = await call.a_service.wait_for_phase(ticket.transfer_id, ["completed", "returned"])
        assert snap.phase == "completed"
        assert "consulting" not in [t.phase for t in snap.timeline]
        assert (snap.summary is None) == (mode == "cold")
        assert call.mover is not None
        assert call.mover.session.room_name == ticket.new_room
        assert await hears(b_session, call.caller.identity, CALLER_HZ) > HEARD
        assert await hears(call.mover.session, call.b.identity, B_HZ) > HEARD
        await eventually(lambda: _gone(rooms, call.room))


async def test_direct_mode_b_joins_on_its_own(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    await _completes_without_consult(transfer_env, room_admin, "direct")


async def test_cold_mode_has_no_summary(transfer_env: TransferEnv, room_admin: RoomAdmin) -> None:
    await _completes_without_consult(transfer_env, room_admin, "cold")


async def test_warm_intro_a_stays_until_done(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    async with open_call(transfer_env, prefix="intro") as call:
        ticket = await call.a_call.transfer(
            caller=call.caller.identity, to_agent=call.b.identity, mode="warm_intro"
        )
        b_session = await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert snap.phase == "completing"
        r2 = {p.identity for p in await room_admin.list_participants(ticket.new_room)}
        assert {call.caller.identity, call.a.identity, call.b.identity} <= r2
        # A introduces B: the caller hears A in the new room.
        assert call.mover is not None
        assert await hears(call.mover.session, call.a.identity, A_HZ) > HEARD
        snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert snap.phase == "completed"
        await eventually(lambda: _absent(room_admin, ticket.new_room, call.a.identity))
        assert await hears(b_session, call.caller.identity, CALLER_HZ) > HEARD


async def _on_standby(rooms: RoomAdmin, room: str, identity: str) -> bool:
    return any(
        p.identity == identity and p.audio_tracks == 1 and not p.unmuted_audio_tracks
        for p in await rooms.list_participants(room)
    )


def _subscribed_to(session: RtcSession, identity: str) -> bool:
    p = session.room.remote_participants.get(identity)
    return p is not None and any(pub.subscribed for pub in p.track_publications.values())


async def _absent(rooms: RoomAdmin, room: str, identity: str) -> bool:
    return identity not in {p.identity for p in await rooms.list_participants(room)}


async def test_caller_that_cannot_move_gets_b_brought_in(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    # The caller's client ignores the move instruction (as a SIP participant would).
    async with open_call(transfer_env, caller_moves=False, prefix="nomove") as call:
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
        await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert (snap.phase, snap.strategy) == ("completed", "bring_agent")
        b_session = call.b_lobby.call_session
        assert b_session is not None and b_session.room_name == call.room
        assert await hears(b_session, call.caller.identity, CALLER_HZ) > HEARD
        assert await hears(call.caller_session, call.b.identity, B_HZ) > HEARD
        people = {p.identity for p in await room_admin.list_participants(call.room)}
        assert people == {call.caller.identity, call.b.identity}
        await eventually(lambda: _gone(room_admin, ticket.new_room))


async def test_b_brought_in_counts_once_heard_even_when_its_answer_is_lost(
    transfer_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    """B's app answers ``transfer.join`` only after leaving R2: the answer is lost.

    Before, the service then declared the transfer returned (network) although
    B was in R1 with the caller, and A came back into a three-way call. Arrival
    is judged as the move's is: B heard in R1.
    """
    async with open_call(transfer_env, caller_moves=False, prefix="lostans") as call:
        b = call.b.identity
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=b)
        offer = await call.next_offer()
        b_service = transfer_env.service_for(b)
        grant = await b_service.accept(offer.transfer_id, agent=b)
        # A B app of its own: in R2 with its mic, obeying the join its own way.
        r2 = await RtcSession(url=grant.url, token=grant.token).connect()
        call.extra.append(r2)
        await r2.publish_audio(call.b.source)
        guard = CommandGuard(await b_service.service_info())

        async def join(to: TokenGrant) -> None:
            r1 = await RtcSession(url=to.url, token=to.token).connect()
            call.extra.append(r1)
            await r1.publish_audio(call.b.source)
            await r2.aclose()  # the answer has no connection left to go out on

        joining: list[asyncio.Future[None]] = []

        async def join_then_leave_r2(inv: rtc.RpcInvocationData) -> str:
            to = guard.grant(guard.rpc(r2, inv, RPC_JOIN))
            # Under load the service sends the instruction again when its
            # acknowledgement is late; like the real app, one join serves all
            # (a second connection as B would push the first out of R1).
            if not joining:
                joining.append(asyncio.ensure_future(join(to)))
            await asyncio.shield(joining[0])
            return "joined"

        r2.register_rpc(RPC_JOIN, join_then_leave_r2)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert (snap.phase, snap.strategy) == ("completed", "bring_agent"), snap.reason
        assert await hears(call.caller_session, b, B_HZ) > HEARD
        await eventually(lambda: _absent(room_admin, call.room, call.a.identity))
        people = {p.identity for p in await room_admin.list_participants(call.room)}
        assert people == {call.caller.identity, b}
