"""A warm transfer on a two-node LiveKit deployment, call and transfer rooms on different nodes.

The embedded orchestrator (built as ``embedded_env`` builds it) reaches the
server API through node B and hands clients node A's URL. With one region per
node (see ``tests/livekit_cluster.py``), LiveKit puts a room on the node it
was created or first joined through: R1, first joined by the caller's app
through node A, lives on node A; R2, created by the orchestrator through
node B, on node B. The test reads both placements back from Redis. A's app and
B's lobby connect through node B; everything the service hands out (the hold
participant, the consult, the caller's standby and move, B's join) goes
through node A, so every leg crosses nodes somewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from softphone.client.agent_call import AgentCall
from softphone.client.caller_mover import CallerMover
from softphone.client.commands import CommandGuard
from softphone.client.lobby import AgentLobby, Offer
from softphone.media.session import RtcSession
from softphone.server.token_minter import TokenMinter
from tests.livekit_cluster import LiveKitCluster, local_cluster
from tests.transfer.conftest import (
    A_HZ,
    B_HZ,
    CALLER_HZ,
    HEARD,
    HOLD_HZ,
    Call,
    TransferEnv,
    embedded_service,
    eventually,
    hears,
    ids,
    new_party,
    silent,
)

pytestmark = pytest.mark.integration

NODE_A, NODE_B = 0, 1
LOBBY = "lobby-multinode"


@pytest.fixture(scope="module")
async def cluster(artifacts_dir: Path) -> AsyncIterator[LiveKitCluster]:
    """Two livekit-server nodes on one Redis."""
    async with local_cluster(artifacts_dir) as c:
        yield c


@pytest.fixture(scope="module")
async def cluster_env(cluster: LiveKitCluster) -> AsyncIterator[TransferEnv]:
    """The embedded orchestrator on the cluster: API through node B, clients sent to node A."""
    minter = TokenMinter(api_key=cluster.api_key, api_secret=cluster.api_secret)
    async with embedded_service(
        cluster.nodes[NODE_B], minter, lobby=LOBBY, url=cluster.nodes[NODE_A].url
    ) as env:
        yield env


@contextlib.asynccontextmanager
async def open_call_across_nodes(env: TransferEnv, cluster: LiveKitCluster) -> AsyncIterator[Call]:
    """As ``open_call``, but the caller's app connects through node A, A's and B's through B."""
    caller_url, agents_url = cluster.nodes[NODE_A].url, cluster.nodes[NODE_B].url
    _, c_id, a_id, b_id = ids("multinode")
    caller, a, b = new_party(c_id, CALLER_HZ), new_party(a_id, A_HZ), new_party(b_id, B_HZ)
    for p in (caller, a, b):
        p.tone.start()
    service = env.service_for(c_id)
    ticket = await service.create_call(caller=c_id, agent=a_id, requester=c_id)
    room = ticket.call.room
    a_grant = await service.mint_token(identity=a_id, room=room, role="agent")
    # The caller's app joins first: R1 is placed through node A.
    c_session = RtcSession(url=caller_url, token=ticket.token.token)
    a_session = RtcSession(url=agents_url, token=a_grant.token)
    await c_session.connect()
    await a_session.connect()
    await c_session.publish_audio(caller.source)
    await a_session.publish_audio(a.source)
    guard = CommandGuard(await service.service_info())
    mover = CallerMover(session=c_session, mic=caller.source, guard=guard)
    a_call = AgentCall(session=a_session, mic=a.source, service=service, guard=guard)
    b_grant = await service.mint_token(identity=b_id, room=env.lobby, role="agent")
    b_lobby = AgentLobby(
        lobby_token=b_grant.token, url=agents_url, service=service, guard=guard, mic=b.source
    )
    offers: asyncio.Queue[Offer] = asyncio.Queue()
    b_lobby.on("offer", offers.put_nowait)
    await b_lobby.start()
    call = Call(env, room, caller, a, b, c_session, mover, a_call, b_lobby, offers, [], [])
    try:
        yield call
    finally:
        await b_lobby.aclose()
        await a_call.aclose()
        await mover.aclose()
        for p in (caller, a, b):
            await p.tone.aclose()


async def test_warm_transfer_between_rooms_on_different_nodes(
    cluster: LiveKitCluster, cluster_env: TransferEnv
) -> None:
    async with open_call_across_nodes(cluster_env, cluster) as call:
        caller = call.caller.identity
        assert call.mover is not None
        # Caller (through A) and agent A (through B) talk in R1, hosted on node A.
        assert await cluster.host_of(call.room) == NODE_A
        assert await hears(call.caller_session, call.a.identity, A_HZ) > HEARD
        assert await hears(call.a_call.session, caller, CALLER_HZ) > HEARD

        ticket = await call.a_call.transfer(caller=caller, to_agent=call.b.identity)
        assert ticket.transfer.phase == "offering"
        r2 = ticket.new_room
        # LiveKit's own record of the placement: R2 on the other node.
        assert await cluster.host_of(r2) == NODE_B
        assert await cluster.host_of(call.room) == NODE_A

        offer = await call.next_offer()
        b_session = await call.b_lobby.accept(offer.transfer_id)
        await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
        # On hold across nodes: the caller hears the hold tone, not A.
        assert await hears(call.caller_session, f"hold-{ticket.transfer_id}", HOLD_HZ) > HEARD
        assert await silent(call.caller_session, call.a.identity, A_HZ)
        # A and B consult in R2 (node B), both through node A.
        await eventually(lambda: asyncio.sleep(0, call.a_call.consult is not None))
        assert await hears(b_session, call.a.identity, A_HZ) > HEARD

        snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
        assert (snap.phase, snap.strategy) == ("completed", "move_caller")
        assert call.mover.session.room_name == r2
        # The caller now hears B, and no longer A.
        assert await hears(call.mover.session, call.b.identity, B_HZ) > HEARD
        assert await silent(call.mover.session, call.a.identity, A_HZ)
        assert await hears(b_session, caller, CALLER_HZ) > HEARD
        # The placements held for the whole transfer.
        assert await cluster.host_of(r2) == NODE_B
