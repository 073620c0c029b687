"""Multi-node LiveKit: two livekit-servers on one Redis, real participants, real audio.

A room lives on one node (LiveKit records which in Redis); people may connect
through either node and still hear each other, their signalling relayed to
the hosting node and their media sent there.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from softphone.errors import LocalServerError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.session import RtcSession
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.livekit_cluster import NODES_KEY, REGIONS, LiveKitCluster, local_cluster
from tests.transfer.conftest import HEARD, hears, new_party

pytestmark = pytest.mark.integration

_ids = itertools.count()


@pytest.fixture(scope="module")
async def cluster(artifacts_dir: Path) -> AsyncIterator[LiveKitCluster]:
    """Two livekit-server nodes, regions ``node-a`` and ``node-b``, on one Redis."""
    async with local_cluster(artifacts_dir) as c:
        yield c


def _room() -> str:
    return f"mn-{next(_ids)}-{uuid.uuid4().hex[:6]}"


async def test_both_nodes_share_one_redis_with_its_password(cluster: LiveKitCluster) -> None:
    ids = await cluster.node_ids()
    # One registration per node, each with its own id and region.
    assert sorted(ids.values()) == [0, 1]
    client = cluster.redis.client()
    try:
        assert await client.hlen(NODES_KEY) == 2
    finally:
        await client.aclose()
    password = cluster.redis.password.get()
    for node in cluster.nodes:
        assert node.pid is not None
        # The Redis password and the API secret reach the server through its
        # environment (readable by this user only), never its command line.
        with open(f"/proc/{node.pid}/cmdline", "rb") as f:
            argv = f.read()
        assert password.encode() not in argv
        assert cluster.api_secret.get().encode() not in argv
        assert password not in node.log_tail(10_000)


async def test_a_node_without_the_redis_password_is_refused(
    cluster: LiveKitCluster, tmp_path: Path
) -> None:
    node = LocalLiveKitServer(
        binary=ensure_server_binary(),
        log_path=tmp_path / "lk.log",
        redis_address=cluster.redis.address,
        ready_timeout=10.0,
    )
    with pytest.raises(LocalServerError) as info:
        await node.start()
    assert not node.running
    assert "NOAUTH" in info.value.message


@contextlib.asynccontextmanager
async def _joined(
    cluster: LiveKitCluster, minter: TokenMinter, room: str, node: int, identity: str, hz: float
) -> AsyncIterator[RtcSession]:
    """``identity`` in ``room`` through node ``node``, publishing a ``hz`` tone."""
    party = new_party(identity, hz)
    party.tone.start()
    token = minter.mint(role="agent", identity=identity, room=room).token
    session = RtcSession(url=cluster.nodes[node].url, token=token)
    try:
        await session.connect()
        await session.publish_audio(party.source)
        yield session
    finally:
        await session.aclose()
        await party.tone.aclose()


@pytest.mark.parametrize(
    ("placed_by", "host"),
    [("created", 0), ("created", 1), ("joined", 1)],
    ids=["created-through-node-a", "created-through-node-b", "first-joined-through-node-b"],
)
async def test_people_on_different_nodes_hear_each_other(
    cluster: LiveKitCluster, placed_by: str, host: int
) -> None:
    minter = TokenMinter(api_key=cluster.api_key, api_secret=cluster.api_secret)
    room = _room()
    other = 1 - host
    admins = [
        RoomAdmin(url=n.url, api_key=cluster.api_key, api_secret=cluster.api_secret)
        for n in cluster.nodes
    ]
    async with contextlib.AsyncExitStack() as stack:
        for admin in admins:
            await stack.enter_async_context(admin)
        if placed_by == "created":
            await admins[host].create_room(room, empty_timeout_s=30, departure_timeout_s=1)
            assert await cluster.host_of(room) == host, "LiveKit placed the room elsewhere"
        # X joins through the hosting node (placing the room there when it
        # does not exist yet), Y through the other one.
        x = await stack.enter_async_context(_joined(cluster, minter, room, host, "x", 440.0))
        assert await cluster.host_of(room) == host
        y = await stack.enter_async_context(_joined(cluster, minter, room, other, "y", 880.0))
        assert await cluster.host_of(room) == host, "a join through the other node moved it"
        assert await hears(y, "x", 440.0) > HEARD
        assert await hears(x, "y", 880.0) > HEARD
        # Either node's API sees the room and both people in it.
        for admin in admins:
            assert {p.identity for p in await admin.list_participants(room)} == {"x", "y"}


async def test_an_inherited_redis_host_does_not_join_a_single_server(
    cluster: LiveKitCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # livekit-server lets REDIS_HOST/REDIS_PASSWORD override its config: a
    # server meant to stand alone must not pick them up from the environment.
    monkeypatch.setenv("REDIS_HOST", cluster.redis.address)
    monkeypatch.setenv("REDIS_PASSWORD", cluster.redis.password.get())
    server = await LocalLiveKitServer(binary=ensure_server_binary()).start()
    client = cluster.redis.client()
    try:
        assert await client.hlen(NODES_KEY) == 2  # the cluster's two, no third
    finally:
        await client.aclose()
        await server.aclose(grace=0.0)


def test_a_region_outside_the_regions_given_is_refused() -> None:
    with pytest.raises(LocalServerError):
        LocalLiveKitServer(
            binary=ensure_server_binary(), redis_address="127.0.0.1:1", region="x", regions=REGIONS
        )
