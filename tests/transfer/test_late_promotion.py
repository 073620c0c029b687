"""A caller on standby whose promotion trails the move instruction keeps its standby connection.

The service grants the standby caller its permissions in R2, then sends the
move instruction in R1: two channels, and under load (``bench/scale.py``,
25 completes at once) the permission reached the caller's app up to 3.3 s
after the service sent it, well after the move. A move that then gave up on
the standby joined R2 afresh, which on that busy machine timed out and
returned the call to A. Here the service's part is played by hand with the
real server API (signed commands, ``UpdateParticipant``) and the promotion is
sent 2.5 s after the move.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from softphone.client.caller_mover import CallerMover
from softphone.client.commands import CommandGuard
from softphone.client.legs import Moved
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import RPC_MOVE, RPC_STANDBY, STANDBY_ADMIT, ServiceInfo, TokenGrant
from softphone.server.command_signer import CommandSigner
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener

pytestmark = pytest.mark.integration

PROMOTION_LAG_S = 2.5


def _grant(
    minter: TokenMinter, url: str, identity: str, room: str, *, standby: bool = False
) -> TokenGrant:
    issued = minter.mint(role="caller", identity=identity, room=room, standby=standby)
    return TokenGrant(
        token=issued.token, identity=identity, room=room, url=url, expires_at=issued.expires_at
    )


async def test_a_move_waits_for_a_promotion_that_trails_it(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    url = livekit_server.url
    r1, r2 = f"{room_name}-r1", f"{room_name}-r2"
    caller, agent_b = "caller-late", "agent-b-late"
    signer = CommandSigner()
    info = ServiceInfo(livekit_url=url, command_key=signer.public_key_b64(), lobby_room="lobby")
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    tone = TonePlayer(source, 440.0)
    tone.start()
    b = minter.mint(role="agent", identity=agent_b, room=r2)
    c1 = await RtcSession(url=url, token=_grant(minter, url, caller, r1).token).connect()
    try:
        async with (
            CallerMover(session=c1, mic=source, guard=CommandGuard(info)) as mover,
            RtcSession(url=url, token=b.token) as sb,
        ):
            standby_grant = _grant(minter, url, caller, r2, standby=True)
            answer = await room_admin.perform_rpc(
                r1,
                caller,
                RPC_STANDBY,
                signer.sign(
                    RPC_STANDBY,
                    to=caller,
                    room=r1,
                    body={**standby_grant.to_dict(), STANDBY_ADMIT: [agent_b]},
                ),
            )
            assert answer == "ready"
            standby = mover.standby(r2)
            assert standby is not None and not standby.may_listen
            listener = Listener(await sb.wait_for_audio(caller))
            moved: asyncio.Future[Moved] = asyncio.get_running_loop().create_future()

            def on_moved(m: Moved) -> None:
                if not moved.done():
                    moved.set_result(m)

            mover.on("moved", on_moved)

            move = asyncio.ensure_future(
                room_admin.perform_rpc(
                    r1,
                    caller,
                    RPC_MOVE,
                    signer.sign(
                        RPC_MOVE, to=caller, room=r1, body=_grant(minter, url, caller, r2).to_dict()
                    ),
                    response_timeout_s=15.0,
                )
            )
            await asyncio.sleep(PROMOTION_LAG_S)
            assert not move.done(), "the move answered before the caller could listen"
            promoted_at = time.monotonic()
            await room_admin.set_permission(r2, caller, TokenMinter.permission("caller"))
            assert await asyncio.wait_for(move, 15.0) == "moved"
            done = await asyncio.wait_for(moved, 10.0)  # left R1 once R2 was audible
            await asyncio.sleep(0.5)
            await listener.aclose()

            assert done.room == r2
            assert done.session is standby, "the move joined R2 afresh instead of the standby"
            assert mover.session is standby
            assert standby.may_listen
            heard = listener.capture.first_time_with(440.0, after=0.0)
            assert heard is not None, "B never heard the caller"
            assert heard > promoted_at, "B heard the caller on standby"
    finally:
        await tone.aclose()
