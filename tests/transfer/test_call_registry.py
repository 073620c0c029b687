"""The call registry: only parties get tokens, only the assigned agent transfers a call.

Each scenario runs against the embedded service and the real backend under
uvicorn (hostile keys are real HTTP clients with their own keys). Findings this
guards against (measured on the old code): a caller key got a token for another
caller's call and heard it; an agent minted itself into a call and started a
transfer of it; a room that does not exist answered differently from one that
does, so names could be probed.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator

import pytest

from softphone.errors import TransferError
from softphone.infra.redis_server import LocalRedisServer
from softphone.protocol import TransferRequest
from softphone.server.call_registry import (
    MAX_ACTIVE_PER_REQUESTER,
    CallRegistry,
    MemoryCallRegistry,
)
from softphone.server.redis_call_registry import RedisCallRegistry
from tests.transfer.conftest import (
    CALL_JOIN_GRACE_S,
    TransferEnv,
    eventually,
    open_call,
    refused,
)

pytestmark = pytest.mark.integration

ROOM_RE = re.compile(r"(call|xfer)-[0-9a-f]{32}")


async def test_only_parties_get_tokens_and_unknown_rooms_answer_the_same(
    transfer_env: TransferEnv,
) -> None:
    env = transfer_env
    async with open_call(env, prefix="reg") as call:
        room = call.room
        assert ROOM_RE.fullmatch(room), f"guessable room name {room!r}"
        # Another caller (its own key) asks for this call's room, then for a
        # room that does not exist: the same 404, word for word.
        other = env.service_for("caller-399")
        taken = await refused(
            env, other.mint_token(identity="caller-399", room=room, role="caller"), 404
        )
        missing = await refused(
            env,
            other.mint_token(identity="caller-399", room="call-" + "0" * 32, role="caller"),
            404,
        )
        assert taken.message == missing.message
        # B is an agent, but not assigned to this call.
        b = call.b.identity
        await refused(env, env.service_for(b).mint_token(identity=b, room=room, role="agent"), 404)
        # A caller may not enter the lobby (where offers and presence live).
        c = call.caller.identity
        await refused(
            env, env.service_for(c).mint_token(identity=c, room=env.lobby, role="caller"), 404
        )
        # The parties themselves get theirs.
        grant = await call.a_service.mint_token(identity=call.a.identity, room=room, role="agent")
        assert grant.room == room and grant.identity == call.a.identity


async def test_an_agent_not_assigned_cannot_transfer_the_call(transfer_env: TransferEnv) -> None:
    env = transfer_env
    async with open_call(env, prefix="reg") as call:
        stolen = TransferRequest(
            caller=call.caller.identity,
            from_agent=call.b.identity,
            to_agent=call.a.identity,
            call_room=call.room,
        )
        await refused(env, env.service_for(call.b.identity).start_transfer(stolen), 404)
        # Nothing was started: the real transfer still can be.
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
        assert ticket.transfer.phase == "offering"
        assert ROOM_RE.fullmatch(ticket.new_room)
        await call.a_service.cancel(ticket.transfer_id, agent=call.a.identity)


async def test_calls_are_listed_to_their_parties_only_and_a_caller_has_one_at_a_time(
    transfer_env: TransferEnv,
) -> None:
    env = transfer_env
    async with open_call(env, prefix="reg") as call:
        a, b, c = call.a.identity, call.b.identity, call.caller.identity
        mine = await call.a_service.list_calls(identity=a, role="agent")
        assert [x.room for x in mine] == [call.room]
        theirs = await env.service_for(b).list_calls(identity=b, role="agent")
        assert call.room not in [x.room for x in theirs]
        c_service = env.service_for(c)
        await refused(env, c_service.create_call(caller=c, agent=b, requester=c), 409)
        # A stranger cannot end it; the caller can, and then nobody gets a token.
        await refused(env, env.service_for(b).end_call(mine[0].call_id, identity=b), 404)
        ended = await c_service.end_call(mine[0].call_id, identity=c)
        assert not ended.active
        await refused(env, call.a_service.mint_token(identity=a, room=call.room, role="agent"), 404)


async def test_a_caller_who_vanished_can_call_again(embedded_env: TransferEnv) -> None:
    """The caller's app closed without hanging up: its next call is not refused forever."""
    env = embedded_env
    async with open_call(env, prefix="gone") as call:
        c = call.caller.identity
        await call.caller_session.aclose()  # no end_call: the app just went away
        await asyncio.sleep(CALL_JOIN_GRACE_S)

        async def calls_again() -> bool:
            try:
                ticket = await env.service_for(c).create_call(
                    caller=c, agent=call.b.identity, requester=c
                )
            except TransferError:
                return False  # the server may not have seen the caller leave yet
            call.extra.append(_Ended(env, ticket.call.call_id, c))
            return True

        await eventually(calls_again)
        mine = await call.a_service.list_calls(identity=call.a.identity, role="agent")
        assert call.room not in [x.room for x in mine]


class _Ended:
    """Ends a call when the test's call is closed."""

    def __init__(self, env: TransferEnv, call_id: str, identity: str) -> None:
        self._env, self._id, self._who = env, call_id, identity

    async def aclose(self) -> None:
        await self._env.service_for(self._who).end_call(self._id, identity=self._who)


@pytest.fixture(params=["memory", "redis"])
async def registries(
    request: pytest.FixtureRequest, redis_server: LocalRedisServer
) -> AsyncIterator[list[CallRegistry]]:
    """Two registries sharing their calls: one process's, or two replicas' on one Redis."""
    if request.param == "memory":
        reg = MemoryCallRegistry()
        yield [reg, reg]
        return
    prefix = f"test-{secrets.token_hex(4)}:"
    regs = [RedisCallRegistry(url=redis_server.url, prefix=prefix) for _ in range(2)]
    yield list(regs)
    for reg in regs:
        await reg.aclose()


async def test_registry_follows_a_call_through_a_transfer(
    registries: list[CallRegistry],
) -> None:
    reg, other = registries
    call = await reg.create(caller="caller-u", agent="agent-a")
    assert await reg.party_of("caller-u", call.room) == "caller"
    assert await reg.party_of("agent-a", call.room) == "agent"
    assert await reg.party_of("agent-b", call.room) is None
    xfer = "xfer-" + "1" * 32
    await reg.open_consult(call.call_id, xfer, from_agent="agent-a", to_agent="agent-b")
    # A and B consult there; the caller cannot ask for it (it gets a grant when moved).
    assert await reg.party_of("agent-b", xfer) == "agent"
    assert await reg.party_of("agent-a", xfer) == "agent"
    assert await reg.party_of("caller-u", xfer) is None
    moved = await reg.hand_over(call.call_id, room=xfer, agent="agent-b")
    assert (moved.room, moved.agent, moved.consult_rooms) == (xfer, "agent-b", ())
    assert await reg.party_of("caller-u", xfer) == "caller"
    assert await reg.party_of("agent-a", xfer) is None
    assert await reg.party_of("agent-a", call.room) is None
    # Another replica sees the same.
    assert await other.party_of("caller-u", xfer) == "caller"
    assert [c.call_id for c in await other.calls(identity="agent-b")] == [call.call_id]
    await other.end(call.call_id)
    assert await reg.party_of("caller-u", xfer) is None
    assert await reg.calls() == []
    assert (await reg.get(call.call_id)).ended_at is not None


async def test_one_key_cannot_fill_the_registry_with_calls(
    registries: list[CallRegistry],
) -> None:
    reg, _ = registries
    for n in range(MAX_ACTIVE_PER_REQUESTER):
        await reg.create(caller=f"caller-f{n}", agent="agent-a", requester="agent-x")
    with pytest.raises(TransferError):
        await reg.create(caller="caller-one-more", agent="agent-a", requester="agent-x")
    # Others are not held back, and an ended call makes room again.
    await reg.create(caller="caller-other", agent="agent-a", requester="agent-y")
    first = (await reg.calls(identity="caller-f0"))[0]
    await reg.end(first.call_id)
    await reg.create(caller="caller-one-more", agent="agent-a", requester="agent-x")


async def test_replicas_racing_for_one_caller_create_one_call(
    registries: list[CallRegistry],
) -> None:
    """Two replicas asked at once for calls of one caller: one wins, none is lost."""
    results = await asyncio.gather(
        *(
            registries[n % 2].create(caller="caller-race", agent="agent-a", requester="agent-a")
            for n in range(10)
        ),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, TransferError) for r in results if isinstance(r, BaseException))
    assert [c.call_id for c in await registries[1].calls(identity="caller-race")] == [
        made[0].call_id
    ]


async def test_replicas_racing_keep_the_per_key_limit(registries: list[CallRegistry]) -> None:
    over = 8
    results = await asyncio.gather(
        *(
            registries[n % 2].create(caller=f"caller-lim{n}", agent="agent-a", requester="gw-x")
            for n in range(MAX_ACTIVE_PER_REQUESTER + over)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == MAX_ACTIVE_PER_REQUESTER


async def test_concurrent_changes_of_one_call_are_all_kept(registries: list[CallRegistry]) -> None:
    """Consult rooms opened at once on two replicas: both stay (no lost update)."""
    call = await registries[0].create(caller="caller-cc", agent="agent-a")
    rooms = [f"xfer-{n:032x}" for n in range(12)]
    await asyncio.gather(
        *(
            registries[n % 2].open_consult(
                call.call_id, room, from_agent="agent-a", to_agent=f"agent-b{n}"
            )
            for n, room in enumerate(rooms)
        )
    )
    assert set((await registries[1].get(call.call_id)).consult_rooms) == set(rooms)
    for n, room in enumerate(rooms):
        assert await registries[0].party_of(f"agent-b{n}", room) == "agent"
