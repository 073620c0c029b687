"""Warm transfers over a bad network: the caller's media through a lossy, delayed path.

Usage: ``./dev bench network [--transfers N]`` (prints one JSON object).

The LiveKit server advertises a UDP relay (``softphone/infra/udp_relay.py``)
as its media address and offers nothing else (no ICE/TCP, no usable IPv6
candidate, ICE lite: no checks of its own that could find a direct path), so
every client's media crosses the relay; only the caller's flows are impaired,
A's, B's and the hold audio's pass untouched. The caller's flows are found
from its sessions' WebRTC statistics (their local UDP candidates) as they
appear; the standby connection (opened when the transfer starts) and a
session opened during a move are impaired from their first datagram
(:meth:`UdpRelay.claiming`); ``LocalLiveKitServer(media_only_at_node_ip=True)``
configures the server so. Per run, ``N`` warm transfers each:

- ``caller_gap_ms``: at ``rtt_added_ms`` added round trip (half each way),
  the longest audio gap the caller hears across the move (hold, then B),
  make-before-break; ``naive_caller_gap_ms``: the same with the naive
  reconnect (leave, then join). Measured as ``bench/transfer.py`` does
  (its ``Ears`` and ``longest_gap_ms``);
- ``loss5_failures`` / ``loss10_failures``: transfers that did not complete,
  or after which the caller and B did not hear each other, with 5 % / 10 %
  of the caller's datagrams lost each way;
- ``blackout2s_failures``: calls in which a 2 s blackout of the caller's
  media (mid-call, with A) dropped the call (the caller gone from the room,
  or not hearing A again), or whose transfer afterwards failed.

Failure reasons go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import socket
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transfer import (
    A_HZ,
    AUDIO_TIMEOUT_S,
    B_HZ,
    CALLER_HZ,
    GAP_WINDOW_S,
    Bench,
    Ears,
    _close_all,
    longest_gap_ms,
    pct,
)
from softphone.client.caller_mover import CallerMover, MoveStrategy
from softphone.client.commands import CommandGuard
from softphone.client.lobby import AgentLobby
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.infra.udp_relay import Address, Impairment, UdpRelay
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from softphone.server.transfer_orchestrator import HOLD_FREQ_HZ

RTT_ADDED_S = 0.050
BLACKOUT_S = 2.0


def listening_ipv4(port: int, *, exclude: Iterable[str] = ()) -> list[Address]:
    """The IPv4 addresses on which some socket of this machine listens on UDP ``port``.

    From ``/proc/net/udp`` (Linux): livekit-server's RTC port is one socket
    per interface address, and it answers a client only on the one its
    candidate was gathered on (candidates rewritten to one ``node_ip`` are
    deduplicated, the survivor picked at random), so the relay is given
    them all.
    """
    found: list[Address] = []
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)  # the header
        for line in table:
            local = line.split()[1]
            hex_ip, hex_port = local.split(":")
            ip = socket.inet_ntoa(struct.pack("=I", int(hex_ip, 16)))
            if int(hex_port, 16) == port and ip not in exclude and ip != "0.0.0.0":
                found.append((ip, port))
    return found


@contextlib.asynccontextmanager
async def relayed_server(
    *, log_path: Path | None = None, seed: int | None = None
) -> AsyncIterator[tuple[LocalLiveKitServer, UdpRelay]]:
    """A local LiveKit server whose only media path is a :class:`UdpRelay`; both closed at the end.

    The relay listens on a random loopback address (127.x.y.z, so that
    sessions on one machine do not collide) on the server's RTC UDP port,
    which the server advertises as its ``node_ip``, and forwards to every
    address the server listens on with that port (see :func:`listening_ipv4`).
    """
    relay_ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
    server = LocalLiveKitServer(
        binary=ensure_server_binary(),
        node_ip=relay_ip,
        log_path=log_path,
        media_only_at_node_ip=True,
    )
    await server.start()
    try:
        assert server.ports is not None
        port = server.ports.rtc_udp
        upstream = listening_ipv4(port, exclude=[relay_ip]) or [("127.0.0.1", port)]
        async with UdpRelay(listen=(relay_ip, port), upstream=upstream, seed=seed) as relay:
            yield server, relay
    finally:
        await server.aclose()


async def udp_addresses(session: RtcSession) -> set[Address]:
    """The local UDP sockets (address, port) of a session's peer connections.

    From its WebRTC statistics: each local UDP candidate's own address if it
    is a host candidate, else its base (``related_address``). The candidate
    of a working pair is often peer-reflexive: the address the server saw,
    which is the relay's socket, not the client's. Empty for a session that
    is closed or not connected.
    """
    if not session.connected:
        return set()
    stats = await session.room.get_rtc_stats()
    found: set[Address] = set()
    for entry in (*stats.publisher_stats, *stats.subscriber_stats):
        if entry.WhichOneof("stats") != "local_candidate":
            continue
        cand = entry.local_candidate.candidate
        if cand.protocol != "udp":
            continue
        if cand.candidate_type == rtc.stats.IceCandidateType.HOST and cand.address:
            found.add((cand.address, cand.port))
        elif cand.related_address:
            found.add((cand.related_address, cand.related_port))
    return found


async def media_peers(session: RtcSession) -> set[str]:
    """The server addresses a session's media goes to (its selected ICE pairs' remote ends).

    The relay's address when the media crosses it; anything else is a bypass.
    """
    stats = await session.room.get_rtc_stats()
    entries = [*stats.publisher_stats, *stats.subscriber_stats]
    selected = {
        e.transport.transport.selected_candidate_pair_id
        for e in entries
        if e.WhichOneof("stats") == "transport"
    }
    remote_ids = {
        e.candidate_pair.candidate_pair.remote_candidate_id
        for e in entries
        if e.WhichOneof("stats") == "candidate_pair" and e.candidate_pair.rtc.id in selected
    }
    return {
        e.remote_candidate.candidate.address
        for e in entries
        if e.WhichOneof("stats") == "remote_candidate" and e.remote_candidate.rtc.id in remote_ids
    }


def sessions_source(
    sessions: Callable[[], Iterable[RtcSession | None]],
) -> Callable[[], Awaitable[set[Address]]]:
    """An address source for :meth:`UdpRelay.follow`: the UDP sockets of ``sessions()``."""

    async def source() -> set[Address]:
        found: set[Address] = set()
        for s in sessions():
            if s is not None:
                with contextlib.suppress(Exception):  # closed under us: next time
                    found |= await udp_addresses(s)
        return found

    return source


async def impaired_flow_seen(relay: UdpRelay, timeout_s: float = 20.0) -> bool:
    """Wait until a targeted flow has carried datagrams (the impairment is in effect)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(f.impaired and f.uplink.forwarded + f.uplink.dropped > 0 for f in relay.flows()):
            return True
        await asyncio.sleep(0.1)
    return False


@contextlib.asynccontextmanager
async def standby_claimed(
    relay: UdpRelay, mover: CallerMover, *, timeout_s: float = 20.0
) -> AsyncIterator[list[str]]:
    """Impair the caller's standby connection from its first datagram.

    Every flow that starts inside the block is a target (the transfer is
    started there: the caller's app connects to R2 on standby, and the hold
    audio joins R1); append the transfer room to the yielded list. On leaving,
    once the caller's standby session is connected (up to ``timeout_s``),
    the flows that are not its own are released again (the hold audio's
    first moments crossed the impaired path).
    """
    rooms: list[str] = []
    with relay.claiming() as claimed:
        yield rooms
        deadline = time.monotonic() + timeout_s
        standby = None
        while rooms and time.monotonic() < deadline:
            standby = mover.standby(rooms[-1])
            if standby is not None:
                break
            await asyncio.sleep(0.05)
    relay.release(claimed - (await udp_addresses(standby) if standby is not None else set()))


@dataclasses.dataclass
class Outcome:
    """One transfer over the bad network."""

    ok: bool
    caller_gap_ms: float | None = None
    error: str = ""


class NetworkBench:
    """Transfers whose caller goes through the relay's impaired path."""

    def __init__(self, bench: Bench, relay: UdpRelay, rooms: RoomAdmin) -> None:
        self.bench = bench
        self.relay = relay
        self.rooms = rooms

    async def one(
        self,
        strategy: MoveStrategy,
        path: Impairment,
        *,
        blackout_s: float = 0.0,
    ) -> Outcome:
        """One warm transfer with the caller's flows on ``path``.

        With ``blackout_s``, the caller's media is first cut for that long
        mid-call; the call must survive it (caller still in R1, hearing A).
        """
        bench, relay = self.bench, self.relay
        tag = uuid.uuid4().hex[:8]
        c_id, a_id, b_id = f"c-{tag}", f"a-{tag}", f"b-{tag}"
        room = (await bench.service.create_call(caller=c_id, agent=a_id, requester=c_id)).call.room
        players: list[TonePlayer] = []

        def tone(freq: float) -> rtc.AudioSource:
            src = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
            player = TonePlayer(src, freq)
            player.start()
            players.append(player)
            return src

        caller_src, a_src, b_src = tone(CALLER_HZ), tone(A_HZ), tone(B_HZ)
        closers: list[Any] = []
        caller_ears: list[Ears] = []
        b_ears: Ears | None = None
        following: asyncio.Task[None] | None = None
        stage = "setup"
        relay.impair_only(())
        relay.impair(both=path)
        try:
            stage = "caller joins R1"
            c_sess = await bench._session("caller", c_id, room)
            await c_sess.publish_audio(caller_src)
            guard = CommandGuard(await bench.service.service_info())
            mover = CallerMover(session=c_sess, mic=caller_src, guard=guard, strategy=strategy)
            closers.append(mover)
            new_rooms: list[str] = []
            # The caller's sessions: R1, its standby in R2, the one it moved to.
            following = relay.follow(
                sessions_source(
                    lambda: [c_sess, mover.session, *(mover.standby(r) for r in new_rooms)]
                )
            )
            stage = "A joins R1"
            a_sess = await bench._session("agent", a_id, room)
            closers.append(a_sess)
            await a_sess.publish_audio(a_src)
            lobby = AgentLobby(
                lobby_token=bench.minter.mint(role="agent", identity=b_id, room=bench.lobby).token,
                url=bench.server.url,
                service=bench.service,
                guard=guard,
                mic=b_src,
            )
            closers.append(lobby)
            offers: asyncio.Queue[Any] = asyncio.Queue()
            lobby.on("offer", offers.put_nowait)
            stage = "B joins the lobby"
            await lobby.start()
            stage = "impairment"
            if not await impaired_flow_seen(relay):
                return Outcome(False, error="the caller's media never reached the relay")
            if blackout_s:
                stage = "blackout"
                error = await self._blackout(c_sess, room, c_id, blackout_s)
                if error:
                    return Outcome(False, error=error)
            # Everything the caller hears: hold in R1, then B in R2.
            caller_ears.append(Ears(c_sess))
            mover.on("joined", lambda s: caller_ears.append(Ears(s)))
            stage = "start_transfer"
            async with standby_claimed(relay, mover) as standby_rooms:
                ticket = await bench.service.start_transfer(
                    TransferRequest(caller=c_id, from_agent=a_id, to_agent=b_id, call_room=room)
                )
                standby_rooms.append(ticket.new_room)
            new_rooms.append(ticket.new_room)
            stage = "offer"
            offer = await asyncio.wait_for(offers.get(), 30)
            b_sess = await lobby.accept(offer.transfer_id)
            b_ears = Ears(b_sess)
            if ticket.consult_token is not None:
                consult = await RtcSession(
                    url=bench.server.url, token=ticket.consult_token.token
                ).connect()
                closers.append(consult)
                await consult.publish_audio(a_src)
            await bench.service.wait_for_phase(ticket.transfer_id, ["consulting"], timeout_s=30)
            await asyncio.sleep(1.0)  # steady state: hold in R1, consult in R2
            stage = "complete"
            t0 = time.monotonic()
            # A session the caller opens now is its own (nobody else joins
            # during the move): impaired from its first datagram.
            with relay.claiming() as claimed:
                snap = await bench.service.complete(ticket.transfer_id, agent=a_id)
                b_onset = await _within(AUDIO_TIMEOUT_S, lambda: _first(caller_ears, B_HZ, t0))
            if snap.phase != "completed":
                return Outcome(False, error=f"transfer {snap.phase} ({snap.reason})")
            if b_onset is None:
                return Outcome(False, error="the caller did not hear B after the move")
            stage = "B hears the caller"
            ears = b_ears
            if await _within(AUDIO_TIMEOUT_S, lambda: ears.first(CALLER_HZ, t0)) is None:
                return Outcome(False, error="B did not hear the caller after the move")
            # Anyone else's flow that carried media on the impaired path is
            # reported (a socket that sent one check and fell silent is not).
            mine = await udp_addresses(mover.session)
            strangers = [
                f.client
                for f in relay.flows()
                if f.client in claimed - mine and f.uplink.forwarded + f.uplink.dropped > 10
            ]
            if strangers:
                print(
                    f"note: {len(strangers)} flow(s) not the caller's impaired during the move",
                    file=sys.stderr,
                )
            # Measured as bench/transfer.py measures it: the longest stretch
            # with nothing audible from the move until just after B is heard,
            # once the whole window has been heard.
            end = b_onset + 0.3
            await asyncio.sleep(max(0.0, max(end, t0 + GAP_WINDOW_S) - time.monotonic()))
            heard = [t for lst in caller_ears for t in lst.times((HOLD_FREQ_HZ, A_HZ, B_HZ))]
            return Outcome(True, longest_gap_ms(heard, t0, end))
        except Exception as exc:  # every failure is counted, with its stage
            return Outcome(False, error=f"{stage}: {exc!r}")
        finally:
            if following is not None:
                following.cancel()
            for lst in [*caller_ears, *([b_ears] if b_ears else [])]:
                await lst.aclose()
            await _close_all(closers, players)
            relay.impair(both=Impairment())

    async def _blackout(self, c_sess: RtcSession, room: str, c_id: str, seconds: float) -> str:
        """Cut the caller's media for ``seconds``; '' if the call survived, else why not."""
        relay = self.relay
        before = relay.totals(impaired=True)
        relay.blackout(True)
        await asyncio.sleep(seconds)
        relay.blackout(False)
        after = relay.totals(impaired=True)
        if after["downlink"].dropped <= before["downlink"].dropped:
            return "the blackout dropped nothing"
        people = {p.identity for p in await self.rooms.list_participants(room)}
        if c_id not in people or not c_sess.connected:
            return "the caller left the call in the blackout"
        ears = Ears(c_sess)
        try:
            start = time.monotonic()
            if await _within(AUDIO_TIMEOUT_S, lambda: ears.first(A_HZ, start)) is None:
                return "the caller did not hear A again after the blackout"
        finally:
            await ears.aclose()
        return ""


async def _within(timeout_s: float, probe: Callable[[], float | None]) -> float | None:
    """Wait up to ``timeout_s`` for ``probe()`` to give a time; None if it never does."""
    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return found


def _first(listeners: list[Ears], freq: float, after: float) -> float | None:
    """The first arrival of ``freq`` after ``after`` on any of ``listeners``."""
    hits = [h for lst in listeners if (h := lst.first(freq, after)) is not None]
    return min(hits) if hits else None


def _two(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1)}


async def network_bench(transfers: int = 10) -> dict[str, Any]:
    """Run every scenario ``transfers`` times; returns the ``network`` object of the issue.

    Keys: ``rtt_added_ms``, ``caller_gap_ms`` and ``naive_caller_gap_ms``
    ({p50, p95}), ``loss5_failures``, ``loss10_failures``, ``blackout2s_failures``.
    """
    async with (
        relayed_server() as (server, relay),
        RoomAdmin(url=server.url, api_key=server.api_key, api_secret=server.api_secret) as rooms,
    ):
        bench = Bench(server, rooms)
        net = NetworkBench(bench, relay, rooms)
        delayed = Impairment(delay_s=RTT_ADDED_S / 2)
        async with bench.service:

            async def runs(
                label: str, strategy: MoveStrategy, path: Impairment, **kw: Any
            ) -> list[Outcome]:
                out = []
                for i in range(transfers):
                    o = await net.one(strategy, path, **kw)
                    if not o.ok:
                        print(f"{label} #{i + 1} failed: {o.error}", file=sys.stderr)
                    out.append(o)
                return out

            mbb = await runs("rtt make-before-break", "make_before_break", delayed)
            naive = await runs("rtt naive", "break_before_make", delayed)
            loss5 = await runs("loss 5%", "make_before_break", Impairment(loss=0.05))
            loss10 = await runs("loss 10%", "make_before_break", Impairment(loss=0.10))
            blackout = await runs(
                "blackout 2 s", "make_before_break", Impairment(), blackout_s=BLACKOUT_S
            )

    def gaps(outs: list[Outcome]) -> list[float]:
        return [o.caller_gap_ms for o in outs if o.ok and o.caller_gap_ms is not None]

    def failures(outs: list[Outcome]) -> int:
        return sum(not o.ok for o in outs)

    return {
        "rtt_added_ms": round(RTT_ADDED_S * 1000),
        "caller_gap_ms": _two(gaps(mbb)),
        "naive_caller_gap_ms": _two(gaps(naive)),
        "loss5_failures": failures(loss5),
        "loss10_failures": failures(loss10),
        "blackout2s_failures": failures(blackout),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=10, help="transfers per scenario")
    args = parser.parse_args()
    if args.transfers < 1:
        parser.error("--transfers must be at least 1")
    out = asyncio.run(network_bench(args.transfers))
    print(json.dumps({"network": out}))


if __name__ == "__main__":
    main()
