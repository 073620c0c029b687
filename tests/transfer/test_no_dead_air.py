"""No dead air on the workstation side: hold audio from A's app, a lost service, several replicas.

- Hold audio comes from A's own app (a ``hold`` track in the call room that
  only the caller may subscribe to, A's mic held muted), so the service needs
  no participant of its own for it (``hold_audio=False`` here).
- The service killed with SIGKILL mid-transfer (offering, consulting): A's app
  notices within seconds and goes back to the caller by itself; B's phone
  stops ringing with a clear reason; the caller's app leaves the transfer room.
- ``RemoteTransferService`` with several backend URLs moves on to the next
  replica when one cannot be reached, never on an answer.

Real parts throughout: the LiveKit server, the backend under uvicorn (killed
with a real SIGKILL), RTC participants playing tones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from softphone.client.lobby import Withdrawn
from softphone.client.transfer_watch import ServiceLost
from softphone.config import Secret
from softphone.errors import BackendError, NotFoundError, TransferError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import RtcSession
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.transfer.backend_process import BackendProcess
from tests.transfer.conftest import (
    A_HZ,
    B_HZ,
    CALLER_HZ,
    HEARD,
    HOLD_HZ,
    MIC,
    Call,
    TransferEnv,
    clients_env,
    embedded_service,
    eventually,
    hears,
    hears_track,
    open_call,
    silent_track,
    tracks_of,
)

pytestmark = pytest.mark.integration


# ---- helpers --------------------------------------------------------------------------
async def _true(value: object) -> bool:
    return bool(value)


async def in_room(rooms: RoomAdmin, room: str) -> set[str]:
    try:
        return {p.identity for p in await rooms.list_participants(room)}
    except NotFoundError:
        return set()


async def watcher_in(env: TransferEnv, call: Call, tag: str) -> RtcSession:
    """Another participant of the call room (a supervisor, say), closed with the call."""
    token = env.minter.mint(role="agent", identity=f"watcher-{tag}", room=call.room).token
    session = RtcSession(url=env.url, token=token)
    await session.connect()
    call.extra.append(session)
    return session


async def back_with_caller(call: Call) -> None:
    """A is back with the caller: A's mic live, heard both ways, no hold track left."""
    a, caller = call.a.identity, call.caller.identity
    await eventually(lambda: _true(not call.a_call.session.muted))
    await eventually(lambda: _true(not tracks_of(call.caller_session, a, HOLD_TRACK)))
    assert await hears_track(call.caller_session, a, MIC, A_HZ) > HEARD
    assert await hears(call.a_call.session, caller, CALLER_HZ) > HEARD


# ---- hold audio from A's app --------------------------------------------------------
@pytest.fixture(scope="module")
async def quiet_env(
    livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> AsyncIterator[TransferEnv]:
    """The embedded service without hold audio of its own: A's app plays it."""
    # Long offers: the checks made while B's phone rings take a while under load.
    async with embedded_service(
        livekit_server, minter, lobby="lobby-quiet", offer_timeout_s=30.0, hold_audio=False
    ) as env:
        yield env


async def test_hold_audio_comes_from_a_for_the_caller_only(
    quiet_env: TransferEnv, room_admin: RoomAdmin
) -> None:
    async with open_call(quiet_env, prefix="hold") as call:
        a, caller = call.a.identity, call.caller.identity
        watcher = await watcher_in(quiet_env, call, "hold")
        assert await hears(watcher, caller, CALLER_HZ) > HEARD  # it hears the room
        assert await hears(watcher, a, A_HZ) > HEARD
        ticket = await call.a_call.transfer(caller=caller, to_agent=call.b.identity)
        assert call.a_call.session.muted and call.a_call.session.held
        # The caller hears the hold tone from A's own track; no service participant plays it.
        assert await hears_track(call.caller_session, a, HOLD_TRACK, HOLD_HZ) > HEARD
        assert not [p for p in await in_room(room_admin, call.room) if p.startswith("hold-")]
        # A's own unmute does not reach the caller while the caller is on hold.
        call.a_call.session.set_muted(False)
        assert call.a_call.session.muted
        assert await silent_track(call.caller_session, a, MIC, A_HZ)
        # Nobody but the caller receives the hold track; A's mic is silent to all.
        await asyncio.sleep(1.0)
        assert tracks_of(watcher, a, HOLD_TRACK) == []
        assert await silent_track(watcher, a, MIC, A_HZ)
        assert await hears(watcher, caller, CALLER_HZ) > HEARD
        # Consulting: A and B talk; the caller is still on hold and hears neither.
        b_session = await call.b_lobby.accept((await call.next_offer()).transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        await eventually(lambda: _true(call.a_call.consult is not None))
        assert call.a_call.consult is not None
        assert await hears(b_session, a, A_HZ) > HEARD
        assert await hears(call.a_call.consult, call.b.identity, B_HZ) > HEARD
        assert await hears_track(call.caller_session, a, HOLD_TRACK, HOLD_HZ) > HEARD
        assert await silent_track(call.caller_session, a, MIC, A_HZ)
        # A takes the call back: the hold stops, everyone may hear A again.
        snap = await call.a_service.cancel(ticket.transfer_id, agent=a)
        assert snap.phase == "returned"
        await back_with_caller(call)
        assert not call.a_call.session.held
        assert await hears(watcher, a, A_HZ) > HEARD


@pytest.mark.parametrize("ending", ["declined", "refused"])
async def test_hold_stops_however_the_transfer_ends(quiet_env: TransferEnv, ending: str) -> None:
    async with open_call(quiet_env, prefix=f"hold-{ending}") as call:
        a, caller = call.a.identity, call.caller.identity
        if ending == "refused":
            # B is not online: the service refuses the transfer before it starts.
            with pytest.raises(NotFoundError):
                await call.a_call.transfer(caller=caller, to_agent="agent-b-999")
        else:
            ticket = await call.a_call.transfer(caller=caller, to_agent=call.b.identity)
            assert await hears_track(call.caller_session, a, HOLD_TRACK, HOLD_HZ) > HEARD
            await call.b_lobby.decline((await call.next_offer()).transfer_id, "busy")
            snap = await call.a_service.wait_for_phase(ticket.transfer_id, ["returned"])
            assert snap.reason is not None and snap.reason.code == "declined"
        await back_with_caller(call)
        assert call.a_call.hold is None and not call.a_call.session.held
        await asyncio.sleep(1.0)  # a hold still publishing would show up by now
        assert tracks_of(call.caller_session, a, HOLD_TRACK) == []


# ---- the service killed mid-transfer -------------------------------------------------
@contextlib.asynccontextmanager
async def doomed_backend(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, workdir: Path, lobby: str
) -> AsyncIterator[TransferEnv]:
    """A backend of its own for one test, which kills it."""
    async with (
        BackendProcess(
            livekit_server=livekit_server, workdir=workdir, lobby=lobby, offer_timeout_s=30.0
        ) as backend,
        clients_env(backend, url=livekit_server.url, minter=minter) as env,
    ):
        yield env


@pytest.mark.parametrize("phase", ["offering", "consulting"])
async def test_a_returns_to_the_caller_when_the_service_dies(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    room_admin: RoomAdmin,
    tmp_path: Path,
    phase: str,
) -> None:
    async with (
        doomed_backend(livekit_server, minter, tmp_path, f"lobby-doomed-{phase}") as env,
        open_call(env, prefix=f"lost-{phase}") as call,
    ):
        assert env.backend is not None and call.mover is not None
        a, b, caller = call.a.identity, call.b.identity, call.caller.identity
        lost: list[ServiceLost] = []
        dropped: list[Withdrawn] = []
        call.a_call.on("transfer_lost", lost.append)
        call.b_lobby.on("offer_withdrawn", dropped.append)
        b_lost: list[ServiceLost] = []
        call.b_lobby.on("consult_lost", b_lost.append)
        ticket = await call.a_call.transfer(caller=caller, to_agent=b)
        tid, r2 = ticket.transfer_id, ticket.new_room
        offer = await call.next_offer()
        assert await hears_track(call.caller_session, a, HOLD_TRACK, HOLD_HZ) > HEARD
        await eventually(lambda: _true(call.mover and call.mover.standby(r2)))
        b_session: RtcSession | None = None
        if phase == "consulting":
            b_session = await call.b_lobby.accept(offer.transfer_id)
            await call.a_service.wait_for_phase(tid, ["consulting"])
            await eventually(lambda: _true(call.a_call.consult is not None))
            assert call.a_call.consult is not None
            assert await hears(b_session, a, A_HZ) > HEARD
            assert await hears(call.a_call.consult, b, B_HZ) > HEARD

        env.backend.kill()
        killed = time.monotonic()
        await eventually(lambda: _true(lost), timeout_s=30.0)
        print(
            f"\nA back with the caller {time.monotonic() - killed:.2f} s after the kill ({phase})"
        )
        assert (lost[0].transfer_id, lost[0].kind, lost[0].phase) == (tid, "unreachable", phase)
        assert "has not answered" in lost[0].message
        await back_with_caller(call)
        assert tid in call.a_call.abandoned

        if phase == "consulting":
            # A left the consult, and B's app too noticed the service gone and
            # left the transfer room: nobody waits there alone.
            assert b_session is not None
            assert call.a_call.consult is None
            assert b not in call.a_call.session.remote_identities()
            await eventually(lambda: _true(b_lost), timeout_s=30.0)
            assert (b_lost[0].transfer_id, b_lost[0].kind) == (tid, "unreachable")
            assert call.b_lobby.call_session is None
            await eventually(lambda: _gone_from(room_admin, r2, a))
            await eventually(lambda: _gone_from(room_admin, r2, b))
        else:
            # B's phone stops ringing, with a reason; accepting says why it cannot.
            await eventually(lambda: _true([w for w in dropped if w.transfer_id == tid]))
            withdrawn = next(w for w in dropped if w.transfer_id == tid)
            assert withdrawn.reason == "unreachable"
            assert "can no longer be accepted" in withdrawn.message
            assert tid not in call.b_lobby.offers
            with pytest.raises(TransferError) as info:
                await call.b_lobby.accept(tid)
            assert "could not be reached" in info.value.message

        # The caller's app leaves the transfer room it waited in.
        await eventually(lambda: _true(call.mover and call.mover.standby(r2) is None))
        await eventually(lambda: _gone_from(room_admin, r2, caller))
        # ...and still talks with A in the call room.
        assert await hears_track(call.caller_session, a, MIC, A_HZ) > HEARD


async def _gone_from(rooms: RoomAdmin, room: str, identity: str) -> bool:
    return identity not in await in_room(rooms, room)


async def test_b_drops_an_offer_it_cannot_accept_any_more(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, tmp_path: Path
) -> None:
    """Accepting fails with a network error before the watch notices: dropped all the same."""
    async with (
        doomed_backend(livekit_server, minter, tmp_path, "lobby-doomed-accept") as env,
        open_call(env, prefix="lost-accept") as call,
    ):
        assert env.backend is not None
        dropped: list[Withdrawn] = []
        call.b_lobby.on("offer_withdrawn", dropped.append)
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
        await call.next_offer()
        env.backend.kill()
        with pytest.raises(TransferError) as info:
            await call.b_lobby.accept(ticket.transfer_id)
        assert "could not be reached" in info.value.message
        assert isinstance(info.value.__cause__, BackendError)
        assert ticket.transfer_id not in call.b_lobby.offers
        assert [w.reason for w in dropped if w.transfer_id == ticket.transfer_id] == ["unreachable"]


# ---- several backend replicas --------------------------------------------------------
async def test_remote_service_moves_on_to_a_replica_that_answers(
    livekit_server: LocalLiveKitServer, tmp_path: Path
) -> None:
    from softphone.client.remote_service import RemoteTransferService

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one_dir.mkdir()
    two_dir.mkdir()
    one, two = (
        BackendProcess(
            livekit_server=livekit_server, workdir=d, lobby="lobby-r", offer_timeout_s=30
        )
        for d in (one_dir, two_dir)
    )
    two.keys = one.keys  # replicas of one deployment know the same keys
    agent = "agent-a-7"
    async with (
        one,
        two,
        RemoteTransferService(
            base_url=[one.url, two.url], api_key=Secret(one.keys[agent])
        ) as service,
    ):
        assert isinstance(service, RemoteTransferService)
        info = await service.service_info()
        assert service.base_url == one.url
        one.kill()
        # Refused by the first: the second answers, and is asked first from now on.
        again = await service.service_info()
        assert (again.livekit_url, again.lobby_room) == (info.livekit_url, info.lobby_room)
        assert service.base_url == two.url
        grant = await service.mint_token(identity=agent, room="lobby-r", role="agent")
        assert (grant.identity, grant.room) == (agent, "lobby-r")
        # An answer is never sent elsewhere: a 4xx comes back as it is (sent on
        # to the dead first replica it would have become a 503).
        with pytest.raises(BackendError) as refused:
            await service.mint_token(identity="agent-a-8", room="lobby-r", role="agent")
        assert 400 <= refused.value.status < 500
        two.kill()
        with pytest.raises(BackendError) as nobody:
            await service.service_info()
        assert nobody.value.status == 503 and nobody.value.retryable
