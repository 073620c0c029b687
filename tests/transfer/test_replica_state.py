"""The live state the backend's replicas share in Redis (real redis-server).

Two :class:`RedisState` objects on one Redis are two replicas: what one
writes the other reads, events reach both, leases lapse when not renewed, and
a request forwarded to the replica that drives a transfer is answered by it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from softphone.domain.transfer import EndReason, Transfer
from softphone.errors import NotFoundError, TransferError
from softphone.infra.redis_server import LocalRedisServer
from softphone.server.redis_state import RedisState


@pytest.fixture
async def replicas(redis_server: LocalRedisServer) -> AsyncIterator[list[RedisState]]:
    prefix = f"test-{secrets.token_hex(4)}:"
    states = [RedisState(url=redis_server.url, prefix=prefix) for _ in range(2)]
    for state in states:
        await state.start()
    yield states
    for state in states:
        await state.aclose()


def _transfer(n: int = 0) -> Transfer:
    return Transfer(
        transfer_id=f"t{n}-{secrets.token_hex(4)}",
        mode="warm",
        call_room="call-" + "1" * 32,
        new_room="xfer-" + "2" * 32,
        caller="caller-s",
        from_agent="agent-a",
        to_agent="agent-b",
        at=1.0,
    )


async def test_a_snapshot_is_written_forwards_only_and_reaches_every_replica(
    replicas: list[RedisState],
) -> None:
    one, two = replicas
    seen: list[dict[str, Any]] = []
    two.on_event(seen.append)
    t = _transfer()
    old = t.snapshot()
    t.advance("offering", at=2.0)
    assert await one.put_transfer(t.snapshot(), call_id="c1")
    # A late writer with an older version changes nothing.
    assert not await two.put_transfer(old, call_id="c1")
    got = await two.get_transfer(t.transfer_id)
    assert got is not None and got[0].phase == "offering" and got[1] == "c1"
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.02)
    assert seen and seen[0]["transfer"]["phase"] == "offering"
    # Running until it is over; then no longer listed as running.
    assert t.transfer_id in await one.orphans()
    t.give_back(EndReason("cancelled"), at=3.0)
    await two.put_transfer(t.snapshot(), call_id="c1")
    assert t.transfer_id not in await one.orphans()


async def test_a_call_room_runs_one_transfer_at_a_time(replicas: list[RedisState]) -> None:
    one, two = replicas
    room = "call-" + secrets.token_hex(16)
    assert await one.claim_room(room, "ta") is None
    assert await two.claim_room(room, "tb") == "ta"
    await two.free_room(room, "tb")  # not its claim: nothing happens
    assert await one.room_transfer(room) == "ta"
    await one.free_room(room, "ta")
    assert await two.claim_room(room, "tb") is None


async def test_a_lease_lapses_unless_renewed_and_then_another_replica_takes_it(
    replicas: list[RedisState],
) -> None:
    one, two = replicas
    t = _transfer(1)
    await one.put_transfer(t.snapshot(), call_id="c2")
    assert await one.take_lease(t.transfer_id, 0.4)
    assert not await two.take_lease(t.transfer_id, 0.4)
    assert await two.lease_owner(t.transfer_id) == one.replica
    assert t.transfer_id not in await two.orphans()
    for _ in range(4):
        await asyncio.sleep(0.2)
        assert await one.renew_leases([t.transfer_id], 0.4) == set()
    assert t.transfer_id not in await two.orphans()
    await asyncio.sleep(0.6)  # replica one stopped renewing
    assert t.transfer_id in await two.orphans()
    assert await two.take_lease(t.transfer_id, 5.0)
    # The stalled replica learns that it lost the lease.
    assert await one.renew_leases([t.transfer_id], 0.4) == {t.transfer_id}
    assert await one.lease_owner(t.transfer_id) == two.replica


async def test_a_gone_replica_is_known_at_once_and_its_lease_taken_before_it_expires(
    replicas: list[RedisState], redis_server: LocalRedisServer
) -> None:
    one, two = replicas
    prefix = one._p  # the same deployment
    three = RedisState(url=redis_server.url, prefix=prefix)
    await three.start()
    t = _transfer(2)
    await three.put_transfer(t.snapshot(), call_id="c3")
    assert await three.take_lease(t.transfer_id, 60.0)
    # A live replica's lease is not for taking, even named as gone.
    assert t.transfer_id not in await one.orphans()
    assert not await one.take_lease(t.transfer_id, 5.0, from_replica=two.replica)
    assert not await one.take_lease(t.transfer_id, 5.0, from_replica=three.replica)
    # Its process ends without giving anything up: Redis closes its connections.
    await three.aclose()
    for _ in range(50):
        if t.transfer_id in await one.orphans():
            break
        await asyncio.sleep(0.05)
    assert (await one.orphans())[t.transfer_id] == three.replica
    assert await one.lease_owner(t.transfer_id) == three.replica  # 60 s to run
    assert not await one.take_lease(t.transfer_id, 5.0)  # only when named
    assert await one.take_lease(t.transfer_id, 5.0, from_replica=three.replica)
    assert not await two.take_lease(t.transfer_id, 5.0, from_replica=three.replica)
    assert await two.lease_owner(t.transfer_id) == one.replica
    assert t.transfer_id not in await two.orphans()


async def test_a_request_reaches_the_replica_that_drives_and_its_errors_come_back(
    replicas: list[RedisState],
) -> None:
    one, two = replicas

    async def serve(method: str, args: dict[str, Any]) -> Any:
        if method == "echo":
            return {"by": one.replica, "args": args}
        raise TransferError("not now")

    one.serve_requests(serve)
    answer = await two.forward(one.replica, "echo", {"x": "1"}, timeout_s=5.0)
    assert answer == {"by": one.replica, "args": {"x": "1"}}
    with pytest.raises(TransferError, match="not now"):
        await two.forward(one.replica, "other", {}, timeout_s=5.0)
    with pytest.raises(NotFoundError):
        await two.forward("replica-gone", "echo", {}, timeout_s=1.0)
