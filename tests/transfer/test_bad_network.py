"""Bad networks: the caller's media through a lossy, delayed or blacked-out path.

A real LiveKit server advertises a real UDP relay (``softphone/infra/udp_relay.py``)
as its only media path; the caller's flows (found from its sessions' WebRTC
statistics as they appear) are impaired, A's, B's and the hold audio's are
not. Transfers run against the embedded service with the caller moving
make-before-break. The 10-transfer runs are in ``bench/network.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from bench.network import (
    BLACKOUT_S,
    RTT_ADDED_S,
    impaired_flow_seen,
    media_peers,
    relayed_server,
    sessions_source,
    standby_claimed,
    udp_addresses,
)
from softphone.errors import LocalServerError, ValidationError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.udp_relay import CLEAR, Address, Impairment, UdpRelay
from softphone.media.session import RtcSession
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.server.transfer_orchestrator import TransferOrchestrator
from softphone.speech.offline_summarizer import OfflineSummarizer
from tests.transfer.conftest import (
    A_HZ,
    B_HZ,
    CALL_JOIN_GRACE_S,
    CALLER_HZ,
    HEARD,
    OFFER_TIMEOUT_S,
    Call,
    TransferEnv,
    hears,
    open_call,
    silent,
)

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class BadNetwork:
    """The relayed server, its relay, the embedded service on it, and its API."""

    server: LocalLiveKitServer
    relay: UdpRelay
    env: TransferEnv
    rooms: RoomAdmin


@pytest.fixture(scope="module")
async def bad_network(artifacts_dir: Path) -> AsyncIterator[BadNetwork]:
    """A LiveKit server whose media goes only through a relay, and the embedded service."""
    async with (
        relayed_server(log_path=artifacts_dir / "livekit-relayed.log", seed=11) as (server, relay),
        RoomAdmin(url=server.url, api_key=server.api_key, api_secret=server.api_secret) as rooms,
    ):
        minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        service = TransferOrchestrator(
            url=server.url,
            rooms=rooms,
            minter=minter,
            summarizer=OfflineSummarizer(timeout_s=3.0),
            fallback_summarizer=OfflineSummarizer(timeout_s=3.0),
            lobby_room="lobby-bad-network",
            offer_timeout_s=OFFER_TIMEOUT_S,
            # The caller's move crosses the bad path: more time than on loopback.
            move_timeout_s=15.0,
            call_join_grace_s=CALL_JOIN_GRACE_S,
        )
        async with service:
            env = TransferEnv(
                kind="embedded",
                url=server.url,
                lobby="lobby-bad-network",
                minter=minter,
                service_for=lambda identity: service,
            )
            yield BadNetwork(server, relay, env, rooms)


@pytest.fixture
def net(bad_network: BadNetwork) -> Iterator[BadNetwork]:
    """The bad network with a clean path and no targets before and after each test."""
    bad_network.relay.impair(both=CLEAR)
    bad_network.relay.impair_only(())
    bad_network.relay.reset_totals()
    yield bad_network
    bad_network.relay.impair(both=CLEAR)
    bad_network.relay.impair_only(())


@contextlib.asynccontextmanager
async def caller_impaired(net: BadNetwork, call: Call, new_rooms: list[str]) -> AsyncIterator[None]:
    """Make the caller's flows (R1, its standby in ``new_rooms``, where it moved) the targets."""
    assert call.mover is not None
    mover = call.mover
    following = net.relay.follow(
        sessions_source(
            lambda: [
                call.caller_session,
                mover.session,
                *(mover.standby(r) for r in new_rooms),
            ]
        )
    )
    try:
        # The impairment is in effect before anything is measured.
        assert await impaired_flow_seen(net.relay), "the caller's media does not cross the relay"
        yield
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def _transfer_completes(net: BadNetwork, path: Impairment, prefix: str) -> None:
    """A warm transfer with the caller on ``path``: completed, caller and B hear each other."""
    async with open_call(net.env, prefix=prefix) as call:
        new_rooms: list[str] = []
        net.relay.impair(both=path)
        async with caller_impaired(net, call, new_rooms):
            if path.delay_s:
                # The caller's ICE consent checks see the added round trip (a
                # lower bound: load only adds to it).
                # (0.9: the SDK reports whole milliseconds.)
                added = 2 * path.delay_s * 0.9
                assert await _ice_round_trip(call.caller_session, added) >= added
            caller, b = call.caller.identity, call.b.identity
            assert call.mover is not None
            # The caller's standby connection to R2 is impaired from its start.
            async with standby_claimed(net.relay, call.mover) as standby_rooms:
                ticket = await call.a_call.transfer(caller=caller, to_agent=b)
                standby_rooms.append(ticket.new_room)
            new_rooms.append(ticket.new_room)
            b_session = await call.b_lobby.accept((await call.next_offer()).transfer_id)
            await call.a_service.wait_for_phase(ticket.transfer_id, ["consulting"])
            # Everyone's media crosses the relay (nobody found a way around
            # it); only the caller's is impaired, A's and B's pass untouched.
            relay_ip = net.relay.address[0]
            assert await media_peers(call.caller_session) == {relay_ip}
            impaired = {f.client: f.impaired for f in net.relay.flows()}
            for other in (call.a_call.session, b_session):
                assert await media_peers(other) == {relay_ip}
                seen = [impaired[a] for a in await udp_addresses(other) if a in impaired]
                assert seen and not any(seen)
            snap = await call.a_service.complete(ticket.transfer_id, agent=call.a.identity)
            assert (snap.phase, snap.strategy) == ("completed", "move_caller"), snap.reason
            assert call.mover is not None
            assert call.mover.session.room_name == ticket.new_room
            assert await hears(call.mover.session, b, B_HZ) > HEARD
            assert await hears(b_session, caller, CALLER_HZ) > HEARD
            # The caller's session in R2 is on the impaired path.
            assert await media_peers(call.mover.session) == {relay_ip}
            impaired = {f.client: f.impaired for f in net.relay.flows()}
            assert any(impaired.get(a) for a in await udp_addresses(call.mover.session))


@pytest.mark.parametrize("loss", [0.05, 0.10])
async def test_transfer_completes_with_lossy_caller(net: BadNetwork, loss: float) -> None:
    await _transfer_completes(net, Impairment(loss=loss), prefix=f"loss{round(loss * 100)}")
    totals = net.relay.totals(impaired=True)
    # Datagrams really were lost, both ways.
    assert totals["uplink"].dropped > 0 and totals["downlink"].dropped > 0


async def test_transfer_completes_with_added_round_trip(net: BadNetwork) -> None:
    await _transfer_completes(net, Impairment(delay_s=RTT_ADDED_S / 2), prefix="rtt")


async def _ice_round_trip(session: RtcSession, at_least: float, timeout_s: float = 20.0) -> float:
    """The largest current ICE round trip (seconds) of the session's candidate pairs.

    Waits up to ``timeout_s`` for one of ``at_least`` (the first checks may
    predate the impairment).
    """
    deadline = time.monotonic() + timeout_s
    best = 0.0
    while time.monotonic() < deadline:
        stats = await session.room.get_rtc_stats()
        for entry in (*stats.publisher_stats, *stats.subscriber_stats):
            if entry.WhichOneof("stats") == "candidate_pair":
                best = max(best, entry.candidate_pair.candidate_pair.current_round_trip_time)
        if best >= at_least:
            return best
        await asyncio.sleep(0.5)
    return best


async def test_caller_blackout_keeps_the_call(net: BadNetwork) -> None:
    async with open_call(net.env, prefix="blackout") as call:
        caller, a = call.caller.identity, call.a.identity
        async with caller_impaired(net, call, []):
            assert await hears(call.caller_session, a, A_HZ) > HEARD
            dropped = net.relay.totals(impaired=True)["downlink"].dropped
            started = time.monotonic()
            net.relay.blackout(True)
            try:
                # The path is really cut: A no longer hears the caller (once
                # what was in flight and the decoder's concealment have played).
                await asyncio.sleep(0.5)
                assert await silent(call.a_call.session, caller, CALLER_HZ, seconds=1.0)
                await asyncio.sleep(max(0.0, started + BLACKOUT_S - time.monotonic()))
            finally:
                net.relay.blackout(False)
            assert net.relay.totals(impaired=True)["downlink"].dropped > dropped
            # The call stays: the caller is still in R1, on the same session,
            # and the two hear each other again.
            people = {p.identity for p in await net.rooms.list_participants(call.room)}
            assert caller in people
            assert call.caller_session.connected
            assert call.caller_session.disconnect_reason is None
            # ...still through the relay: no way around the outage was found.
            assert await media_peers(call.caller_session) == {net.relay.address[0]}
            assert await hears(call.caller_session, a, A_HZ) > HEARD
            assert await hears(call.a_call.session, caller, CALLER_HZ) > HEARD


# ---- the relay itself, between real UDP sockets --------------------------------


class _Echo(asyncio.DatagramProtocol):
    """A UDP echo server standing in for the LiveKit server's port."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)


class _Client(asyncio.DatagramProtocol):
    """A client socket collecting what comes back, with arrival times."""

    def __init__(self) -> None:
        self.got: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.got.append((time.monotonic(), data))


@contextlib.asynccontextmanager
async def _echo_relay(**kw: Any) -> AsyncIterator[UdpRelay]:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    try:
        upstream = echo.get_extra_info("sockname")[:2]
        async with UdpRelay(listen=("127.0.0.1", 0), upstream=upstream, seed=3, **kw) as relay:
            yield relay
    finally:
        echo.close()


@contextlib.asynccontextmanager
async def _client(relay: UdpRelay) -> AsyncIterator[tuple[asyncio.DatagramTransport, _Client]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        _Client, remote_addr=relay.address
    )
    try:
        yield transport, proto
    finally:
        transport.close()


def _addr(transport: asyncio.DatagramTransport) -> Address:
    host, port = transport.get_extra_info("sockname")[:2]
    return str(host), int(port)


async def _settle(proto: _Client, count: int, timeout_s: float = 5.0) -> None:
    """Wait until ``count`` datagrams came back, or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while len(proto.got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": -0.1},
        {"loss": 1.5},
        {"loss": float("nan")},
        {"delay_s": -1.0},
        {"delay_s": float("inf")},
        {"delay_s": 11.0},
        {"blackout": "yes"},
    ],
)
def test_impairment_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        Impairment(**bad)
    assert info.value.field in bad


@pytest.mark.parametrize(
    "bad",
    [
        {"listen": ("localhost", 0)},
        {"listen": ("127.0.0.1", 70000)},
        {"upstream": ("127.0.0.1", 0)},
        {"upstream": ("::1", 7882)},
        {"upstream": []},
        {"upstream": [("127.0.0.1", 7882), "127.0.0.1"]},
        {"max_flows": 0},
        {"idle_timeout_s": 0.0},
    ],
)
def test_relay_rejects_bad_arguments(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"listen": ("127.0.0.1", 0), "upstream": ("127.0.0.1", 7882), **bad}
    with pytest.raises(ValidationError):
        UdpRelay(**args)


async def test_relay_reports_a_taken_address() -> None:
    async with _echo_relay() as relay:
        with pytest.raises(LocalServerError) as info:
            await UdpRelay(listen=relay.address, upstream=relay.upstream).start()
        assert "could not listen" in info.value.message


async def test_relay_loss_delay_and_blackout_hit_targets_only() -> None:
    async with (
        _echo_relay() as relay,
        _client(relay) as (hit, hit_in),
        _client(relay) as (
            spared,
            spared_in,
        ),
    ):
        relay.impair_only([_addr(hit)])
        relay.impair(uplink=Impairment(loss=0.25))
        for i in range(400):
            hit.sendto(b"%d" % i)
            spared.sendto(b"%d" % i)
            if i % 10 == 9:  # paced by the echoes: no socket buffer overflows
                await _settle(spared_in, i + 1)
        await _settle(hit_in, 400, timeout_s=1.0)
        assert len(spared_in.got) == 400
        # Loss is random: about a quarter, never none or all.
        assert 200 < len(hit_in.got) < 380
        assert relay.totals(impaired=True)["uplink"].dropped == 400 - len(hit_in.got)
        assert relay.totals(impaired=False)["uplink"].dropped == 0

        # Delay keeps the order and holds each datagram at least that long each way.
        hit_in.got.clear()
        relay.impair(both=Impairment(delay_s=0.05))
        sent = time.monotonic()
        for i in range(20):
            hit.sendto(b"%d" % i)
        await _settle(hit_in, 20)
        assert [d for _, d in hit_in.got] == [b"%d" % i for i in range(20)]
        # A lower bound only: load can lengthen the trip, never shorten it.
        assert hit_in.got[0][0] - sent >= 0.1

        # A blackout drops everything of the target, and ends.
        hit_in.got.clear()
        spared_in.got.clear()
        relay.blackout(True)
        hit.sendto(b"lost")
        spared.sendto(b"kept")
        await _settle(spared_in, 1)
        await asyncio.sleep(0.3)
        assert hit_in.got == [] and [d for _, d in spared_in.got] == [b"kept"]
        relay.blackout(False)
        hit.sendto(b"back")
        await _settle(hit_in, 1)
        assert [d for _, d in hit_in.got] == [b"back"]


async def test_relay_keeps_to_the_server_address_that_answers() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    silent_end, _ = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
    try:
        answering: Address = echo.get_extra_info("sockname")[:2]
        mute: Address = silent_end.get_extra_info("sockname")[:2]
        async with (
            UdpRelay(listen=("127.0.0.1", 0), upstream=[mute, answering]) as relay,
            _client(relay) as (client, got),
        ):
            for i in range(5):
                client.sendto(b"%d" % i)
                await _settle(got, i + 1)
            assert [d for _, d in got.got] == [b"%d" % i for i in range(5)]
            assert [f.server for f in relay.flows()] == [answering]
            # The silent address got the first datagram only, before the answer.
            assert len(cast(_Client, silent_end.get_protocol()).got) == 1
    finally:
        echo.close()
        silent_end.close()


async def test_relay_flood_cannot_push_out_live_flows() -> None:
    async with (
        _echo_relay(max_flows=4) as relay,
        _client(relay) as (live, live_in),
        contextlib.AsyncExitStack() as stack,
    ):
        live.sendto(b"hello")
        await _settle(live_in, 1)
        # Many new sources at once: beyond the cap, they are refused, not served.
        flood = [await stack.enter_async_context(_client(relay)) for _ in range(8)]
        for t, _ in flood:
            t.sendto(b"x")
        await asyncio.sleep(0.3)
        assert relay.refused == 5
        assert len(relay.flows()) == 4
        live.sendto(b"still here")
        await _settle(live_in, 2)
        assert [d for _, d in live_in.got] == [b"hello", b"still here"]
