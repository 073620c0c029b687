"""A local multi-node LiveKit deployment for tests: two livekit-servers on one Redis.

Built as LiveKit's own integration tests build theirs (``createMultiNodeServer``
in livekit/livekit's ``test/integration_helpers.go``): every node has the same
API key and secret and the same Redis, and its own ports.

Where a room lives is LiveKit's decision, recorded in Redis: the hash
``room_node_map`` maps a room name to the id of the node hosting it, and the
hash ``nodes`` maps a node id to its ``livekit.Node`` protobuf (which carries
the node's region). In livekit-server 1.13.5 a node is picked when a room is
created through the API (``RoomService.CreateRoom``, which may also name the
node, ``node_id``) or first joined (``rtcservice``), by the configured node
selector; the default one (``any``, ``sort_by: random``) picks at random. Each
node here is in a region of its own with the ``regionaware`` selector, so a
room goes to the node it was created or first joined through. Tests read the
placement back from Redis (:meth:`LiveKitCluster.host_of`) rather than assume it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from softphone.config import Secret
from softphone.infra.local_server import LocalLiveKitServer, Region
from softphone.infra.redis_server import LocalRedisServer
from softphone.infra.server_binary import ensure_server_binary

# LiveKit's Redis keys (pkg/routing/redisrouter.go).
NODES_KEY = "nodes"
ROOM_NODE_KEY = "room_node_map"
# Far apart, so that each node's nearest region is its own.
REGIONS = (Region("node-a", 0.0, 0.0), Region("node-b", 45.0, 90.0))
# livekit.Node fields (livekit_internal.proto): 1 id, 7 region.
_NODE_ID, _NODE_REGION = 1, 7


def decode_node(data: bytes) -> dict[str, str]:
    """The id and region of a ``livekit.Node`` as stored in ``nodes``.

    The Python SDK does not ship LiveKit's internal protos; the two string
    fields needed here are read from the wire format with protobuf's own parser.
    """
    message = empty_pb2.Empty()
    message.ParseFromString(data)
    unknown = UnknownFieldSet(message)
    fields = {unknown[i].field_number: unknown[i].data for i in range(len(unknown))}

    def text(number: int) -> str:
        value = fields.get(number, b"")
        return value.decode() if isinstance(value, bytes) else ""

    return {"id": text(_NODE_ID), "region": text(_NODE_REGION)}


@dataclasses.dataclass
class LiveKitCluster:
    """The running deployment: its Redis and its nodes, ``nodes[i]`` in ``REGIONS[i]``."""

    redis: LocalRedisServer
    nodes: list[LocalLiveKitServer]
    api_key: str
    api_secret: Secret

    async def node_ids(self) -> dict[str, int]:
        """The registered node ids, each with the index of its node in ``nodes``."""
        client = self.redis.client()
        try:
            raw = await client.hgetall(NODES_KEY)
        finally:
            await client.aclose()
        index = {r.name: i for i, r in enumerate(REGIONS)}
        found = {}
        for value in raw.values():
            node = decode_node(value if isinstance(value, bytes) else value.encode())
            if node["region"] in index:
                found[node["id"]] = index[node["region"]]
        return found

    async def host_of(self, room: str) -> int | None:
        """Index of the node LiveKit says hosts ``room`` (Redis ``room_node_map``), if any."""
        client = self.redis.client()
        try:
            node_id = await client.hget(ROOM_NODE_KEY, room)
        finally:
            await client.aclose()
        if node_id is None:
            return None
        name = node_id.decode() if isinstance(node_id, bytes) else node_id
        return (await self.node_ids()).get(name)


@contextlib.asynccontextmanager
async def local_cluster(artifacts: Path, size: int = 2) -> AsyncIterator[LiveKitCluster]:
    """A Redis and ``size`` livekit-server nodes on it, all stopped at the end."""
    if not 1 <= size <= len(REGIONS):
        raise ValueError(f"size: 1 to {len(REGIONS)} nodes")
    binary = ensure_server_binary()
    secret = Secret(secrets.token_urlsafe(32))
    async with contextlib.AsyncExitStack() as stack:
        redis_server = await stack.enter_async_context(
            LocalRedisServer(log_path=artifacts / "cluster-redis.log")
        )
        nodes = []
        for i in range(size):
            node = LocalLiveKitServer(
                binary=binary,
                log_path=artifacts / f"cluster-livekit-{REGIONS[i].name}.log",
                redis_address=redis_server.address,
                redis_password=redis_server.password,
                api_secret=secret,
                region=REGIONS[i].name,
                regions=REGIONS,
            )
            nodes.append(await stack.enter_async_context(node))
        cluster = LiveKitCluster(
            redis=redis_server, nodes=nodes, api_key=nodes[0].api_key, api_secret=secret
        )
        yield cluster
