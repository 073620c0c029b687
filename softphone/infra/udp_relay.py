"""A UDP relay in front of the LiveKit server's RTC port: bad networks on demand.

This kernel has no ``netem``, so a lossy, delayed or broken media path is made
in user space: the server advertises the relay's address as its media address
(``rtc.node_ip``), so every client's ICE candidate pair, and with it all its
media, goes through the relay. The relay forwards each client flow (one client
UDP socket) to the server's RTC port from a socket of its own, and the
server's answers back, so the server sees one peer per flow and the client
sees the address it was given.

Flows chosen as *targets* cross an impaired path, configured per direction
(``uplink``: client to server; ``downlink``: server to client) with an
:class:`Impairment`: a loss ratio, an added one-way delay, and a blackout
switch that drops everything. Other flows pass untouched, so one client's
media can be impaired while everyone else's is clean. Targets are every flow
(the default), a set of client addresses (:meth:`UdpRelay.impair_only`,
:meth:`UdpRelay.add_targets`, :meth:`UdpRelay.release`), the addresses an
async source names as they appear (:meth:`UdpRelay.follow`), or every flow
that starts inside a block (:meth:`UdpRelay.claiming`).

The server may listen on several addresses of its port (one per interface)
and answer a client only on the one its chosen candidate was gathered on;
with several ``upstream`` addresses, a flow's first datagrams go to each and
the flow then sticks to the one that answers.

The relay only moves datagrams; ICE, DTLS and SRTP stay end to end between the
client and the server. It listens on one address, keeps at most
``max_flows`` flows (a flood of new sources cannot push out live flows: it is
dropped) and forgets flows idle for ``idle_timeout_s``.

Usage::

    async with UdpRelay(listen=("127.0.0.2", port), upstream=("127.0.0.1", port)) as relay:
        relay.impair_only(caller_sockets)
        relay.impair(uplink=Impairment(loss=0.05, delay_s=0.025))

Command line (a bad network for a manual session)::

    python -m softphone.infra.udp_relay --listen 127.0.0.2:7882 \\
        --upstream 127.0.0.1:7882 --loss 0.05 --delay-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, cast

from softphone.errors import LocalServerError, ValidationError

log = logging.getLogger(__name__)

Address = tuple[str, int]
Direction = Literal["uplink", "downlink"]
DIRECTIONS: tuple[Direction, ...] = ("uplink", "downlink")

# Longest added one-way delay: beyond this a "path" is an outage, use blackout.
MAX_DELAY_S = 10.0
# Datagrams a new flow holds while its upstream socket is being set up.
_PENDING_LIMIT = 256
# A full relay forgets a flow silent this long to admit a new one.
_EVICTABLE_IDLE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Impairment:
    """What a path does to the datagrams crossing it in one direction.

    Args:
        loss: Share of datagrams dropped at random, 0.0 to 1.0.
        delay_s: Added one-way delay in seconds (0 to ``MAX_DELAY_S``);
            order is kept.
        blackout: Drop every datagram (an outage), whatever ``loss`` says.

    Raises:
        ValidationError: A value is out of range or not a number.
    """

    loss: float = 0.0
    delay_s: float = 0.0
    blackout: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.loss, int | float) or not 0.0 <= self.loss <= 1.0:
            raise ValidationError("loss", "must be a ratio between 0.0 and 1.0")
        if (
            not isinstance(self.delay_s, int | float)
            or not math.isfinite(self.delay_s)
            or not 0.0 <= self.delay_s <= MAX_DELAY_S
        ):
            raise ValidationError("delay_s", f"must be between 0 and {MAX_DELAY_S:g} seconds")
        if not isinstance(self.blackout, bool):
            raise ValidationError("blackout", "must be true or false")


CLEAR = Impairment()


@dataclasses.dataclass
class PathCounters:
    """Datagrams of one flow in one direction: passed on, and dropped (loss or blackout)."""

    forwarded: int = 0
    dropped: int = 0


@dataclasses.dataclass(frozen=True)
class FlowInfo:
    """A snapshot of one client flow through the relay (``server``: the address that answered)."""

    client: Address
    impaired: bool
    uplink: PathCounters
    downlink: PathCounters
    server: Address | None = None


@dataclasses.dataclass(eq=False)
class _Flow:
    client: Address
    impaired: bool
    last_seen: float
    uplink: PathCounters = dataclasses.field(default_factory=PathCounters)
    downlink: PathCounters = dataclasses.field(default_factory=PathCounters)
    upstream: asyncio.DatagramTransport | None = None
    # The server address that answered; until then, datagrams go to every one.
    server: Address | None = None
    pending: list[bytes] = dataclasses.field(default_factory=list)
    closed: bool = False


class _ClientSide(asyncio.DatagramProtocol):
    """The listening socket: datagrams from clients."""

    def __init__(self, relay: UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._relay._from_client(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # A client socket gone (ICMP port unreachable): its flow idles out.
        log.debug("relay: client-side error", extra={"error": repr(exc)})


class _ServerSide(asyncio.DatagramProtocol):
    """One flow's socket towards the server: the server's datagrams for that client."""

    def __init__(self, relay: UdpRelay, flow: _Flow) -> None:
        self._relay = relay
        self._flow = flow

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._relay._from_server(self._flow, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # The server's port is closed (it restarts): its datagrams are lost, as on a network.
        log.debug("relay: server-side error", extra={"error": repr(exc)})


def _check_address(field: str, addr: Address) -> Address:
    try:
        host, port = addr
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError, ValueError):
        raise ValidationError(field, "must be an IPv4 address and a port") from None
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError(field, "port must be between 0 and 65535")
    return host, port


class UdpRelay:
    """A UDP relay with impaired paths for chosen client flows.

    Use as ``async with UdpRelay(listen=..., upstream=...) as relay:``; every
    socket and background task is closed when the block ends.

    Args:
        listen: IPv4 address and port to listen on: the media address the
            server advertises (its ``node_ip``) and its RTC UDP port. Port 0
            picks a free one (see :attr:`address`).
        upstream: IPv4 address and port of the server's RTC UDP port, or
            several (the addresses it listens on with that port): each flow
            keeps to the first that answers it.
        max_flows: Most client flows kept at once (each holds a socket). When
            full, the flow silent longest (5 s at least) makes room for a new
            one; with none, datagrams from new sources are dropped.
        idle_timeout_s: A flow with no datagram from its client for this long
            is forgotten (its upstream socket closed). Clients keep a used
            path alive with ICE consent checks every few seconds.
        seed: Seed of the random loss (same seed, same drop pattern for the
            same datagram sequence).

    Raises:
        ValidationError: An argument is out of range.
    """

    def __init__(
        self,
        *,
        listen: Address,
        upstream: Address | Sequence[Address],
        max_flows: int = 512,
        idle_timeout_s: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self._listen = _check_address("listen", listen)
        one = isinstance(upstream, tuple) and len(upstream) == 2 and isinstance(upstream[0], str)
        servers = [upstream] if one else list(upstream)
        if not 1 <= len(servers) <= 16:
            raise ValidationError("upstream", "give between 1 and 16 server addresses")
        self._servers = [_check_address("upstream", cast(Address, a)) for a in servers]
        if any(port == 0 for _, port in self._servers):
            raise ValidationError("upstream", "needs the server's port")
        if not 1 <= max_flows <= 65535:
            raise ValidationError("max_flows", "must be between 1 and 65535")
        if not 0.0 < idle_timeout_s <= 3600.0:
            raise ValidationError("idle_timeout_s", "must be between 0 and 3600 seconds")
        self._max_flows = max_flows
        self._idle_timeout_s = idle_timeout_s
        self._rng = random.Random(seed)
        self._uplink = CLEAR
        self._downlink = CLEAR
        # None: every flow is a target; else the client addresses that are.
        self._targets: set[Address] | None = None
        self._claims: list[set[Address]] = []
        self._flows: dict[Address, _Flow] = {}
        self._listener: asyncio.DatagramTransport | None = None
        # Datagrams by the path they took when they crossed (see totals()).
        self._totals: dict[tuple[bool, Direction], PathCounters] = {}
        self.reset_totals()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.refused = 0

    # -- lifecycle -------------------------------------------------------

    @property
    def address(self) -> Address:
        """The address the relay listens on (clients send here)."""
        if self._listener is None:
            raise LocalServerError("the UDP relay has not been started")
        host, port = self._listener.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def upstream(self) -> list[Address]:
        """The server addresses datagrams are forwarded to."""
        return list(self._servers)

    async def start(self) -> UdpRelay:
        """Bind the listening socket and start forgetting idle flows.

        Raises:
            LocalServerError: The address is taken or not local, or the relay
                was started before.
        """
        if self._listener is not None or self._closed:
            raise LocalServerError("the UDP relay was started before; make a new one")
        loop = asyncio.get_running_loop()
        try:
            self._listener, _ = await loop.create_datagram_endpoint(
                lambda: _ClientSide(self), local_addr=self._listen
            )
        except OSError as exc:
            raise LocalServerError(
                f"the UDP relay could not listen on {self._listen[0]}:{self._listen[1]}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._spawn(self._forget_idle())
        log.info("UDP relay listening", extra={"listen": self.address, "upstream": self._servers})
        return self

    async def aclose(self) -> None:
        """Stop relaying: close every socket and background task."""
        self._closed = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flow in list(self._flows.values()):
            self._close_flow(flow)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def __aenter__(self) -> UdpRelay:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- what is impaired ------------------------------------------------

    @property
    def uplink(self) -> Impairment:
        """The impairment of targeted flows from client to server."""
        return self._uplink

    @property
    def downlink(self) -> Impairment:
        """The impairment of targeted flows from server to client."""
        return self._downlink

    def impair(
        self,
        *,
        uplink: Impairment | None = None,
        downlink: Impairment | None = None,
        both: Impairment | None = None,
    ) -> None:
        """Set the path of targeted flows, per direction (``both`` sets the two alike).

        Takes effect for the next datagram; ones already delayed keep their delay.
        """
        if both is not None:
            uplink = downlink = both
        if uplink is not None:
            self._uplink = uplink
        if downlink is not None:
            self._downlink = downlink

    def set_round_trip(self, added_s: float, *, loss: float = 0.0) -> None:
        """Add ``added_s`` of round trip (half each way) and ``loss`` each way to targets."""
        self.impair(both=Impairment(loss=loss, delay_s=added_s / 2))

    def blackout(self, on: bool = True) -> None:
        """Drop everything to and from targeted flows (True) or restore their path (False).

        Loss and delay are kept for when the blackout ends.
        """
        self._uplink = dataclasses.replace(self._uplink, blackout=on)
        self._downlink = dataclasses.replace(self._downlink, blackout=on)

    def impair_all(self) -> None:
        """Make every flow, present and future, a target (the default)."""
        self._targets = None
        self._retarget()

    def impair_only(self, clients: Iterable[Address]) -> None:
        """Make exactly the flows of these client addresses targets."""
        self._targets = {(str(h), int(p)) for h, p in clients}
        self._retarget()

    def add_targets(self, clients: Iterable[Address]) -> None:
        """Make the flows of these client addresses targets too."""
        if self._targets is None:
            return
        self._targets.update((str(h), int(p)) for h, p in clients)
        self._retarget()

    def release(self, clients: Iterable[Address]) -> None:
        """Make the flows of these client addresses targets no more (unless every flow is)."""
        if self._targets is None:
            return
        self._targets.difference_update((str(h), int(p)) for h, p in clients)
        self._retarget()

    def follow(
        self,
        source: Callable[[], Awaitable[Iterable[Address]]],
        *,
        interval_s: float = 0.2,
    ) -> asyncio.Task[None]:
        """Keep adding the client addresses ``source`` returns as targets, every ``interval_s``.

        For a client whose sockets are known only once it has them (e.g. from
        its WebRTC statistics): a new socket is a target within one interval.
        A failing ``source`` is logged and asked again. Runs until the relay
        closes or the returned task is cancelled.
        """
        if self._targets is None:
            self._targets = set()
            self._retarget()
        return self._spawn(self._follow(source, interval_s))

    async def _follow(
        self, source: Callable[[], Awaitable[Iterable[Address]]], interval_s: float
    ) -> None:
        while True:
            try:
                self.add_targets(await source())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the source's own failure; try again next time
                log.debug("relay: target source failed", extra={"error": repr(exc)})
            await asyncio.sleep(interval_s)

    @contextlib.contextmanager
    def claiming(self) -> Iterator[set[Address]]:
        """Make every flow that starts inside the block a target; yields their addresses.

        For a client that is about to open new sockets while nobody else
        does (a reconnect): its first datagrams are impaired too.
        """
        if self._targets is None:
            self._targets = set()
            self._retarget()
        claimed: set[Address] = set()
        self._claims.append(claimed)
        try:
            yield claimed
        finally:
            self._claims.remove(claimed)

    def _is_target(self, client: Address) -> bool:
        return self._targets is None or client in self._targets

    def _retarget(self) -> None:
        for flow in self._flows.values():
            flow.impaired = self._is_target(flow.client)

    # -- what went through -------------------------------------------------

    def flows(self) -> list[FlowInfo]:
        """A snapshot of every flow the relay keeps."""
        return [
            FlowInfo(
                f.client,
                f.impaired,
                dataclasses.replace(f.uplink),
                dataclasses.replace(f.downlink),
                f.server,
            )
            for f in self._flows.values()
        ]

    def totals(self, *, impaired: bool) -> dict[Direction, PathCounters]:
        """Datagrams that crossed as targets (``impaired``) or not, per direction.

        Counted when they crossed (a flow's later change of target does not
        move them), since the start or :meth:`reset_totals`.
        """
        return {d: dataclasses.replace(self._totals[(impaired, d)]) for d in DIRECTIONS}

    def reset_totals(self) -> None:
        """Start :meth:`totals` from zero."""
        self._totals = {
            (impaired, d): PathCounters() for impaired in (True, False) for d in DIRECTIONS
        }

    # -- forwarding ----------------------------------------------------------

    def _from_client(self, data: bytes, client: Address) -> None:
        flow = self._flows.get(client)
        if flow is None:
            if self._closed:
                return
            if len(self._flows) >= self._max_flows and not self._evict_idlest():
                self.refused += 1
                if self.refused == 1:
                    log.warning("UDP relay is full; dropping datagrams from new sources")
                return
            for claimed in self._claims:
                claimed.add(client)
                if self._targets is not None:
                    self._targets.add(client)
            flow = _Flow(client, self._is_target(client), time.monotonic())
            self._flows[client] = flow
            self._spawn(self._connect_upstream(flow))
        flow.last_seen = time.monotonic()
        self._pass(flow, data, "uplink")

    def _from_server(self, flow: _Flow, data: bytes, server: Address) -> None:
        if flow.server is None and server in self._servers:
            flow.server = server
        if server != flow.server:
            return  # not from the server this flow talks to
        self._pass(flow, data, "downlink")

    def _pass(self, flow: _Flow, data: bytes, direction: Direction) -> None:
        up = direction == "uplink"
        counters = flow.uplink if up else flow.downlink
        total = self._totals[(flow.impaired, direction)]
        path = (self._uplink if up else self._downlink) if flow.impaired else CLEAR
        if path.blackout or (path.loss > 0.0 and self._rng.random() < path.loss):
            counters.dropped += 1
            total.dropped += 1
            return
        counters.forwarded += 1
        total.forwarded += 1
        send = self._send_up if up else self._send_down
        if path.delay_s > 0.0:
            asyncio.get_running_loop().call_later(path.delay_s, send, flow, data)
        else:
            send(flow, data)

    def _send_up(self, flow: _Flow, data: bytes) -> None:
        if flow.closed:
            return
        if flow.upstream is None:
            if len(flow.pending) < _PENDING_LIMIT:
                flow.pending.append(data)
            return
        self._write_up(flow.upstream, flow, data)

    def _write_up(self, upstream: asyncio.DatagramTransport, flow: _Flow, data: bytes) -> None:
        # To the server that answered this flow; before that, to each address.
        for server in [flow.server] if flow.server is not None else self._servers:
            upstream.sendto(data, server)

    def _send_down(self, flow: _Flow, data: bytes) -> None:
        if flow.closed or self._listener is None:
            return
        self._listener.sendto(data, flow.client)

    async def _connect_upstream(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        # A socket of our own, bound at once: no name lookup (the addresses
        # are numeric) between a flow's first datagram and its forwarding.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(("0.0.0.0", 0))
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_ServerSide, self, flow), sock=sock
            )
        except OSError as exc:
            sock.close()
            log.warning("UDP relay could not reach the server", extra={"error": repr(exc)})
            self._close_flow(flow)
            return
        if flow.closed:
            transport.close()
            return
        flow.upstream = transport
        pending, flow.pending = flow.pending, []
        for data in pending:
            self._write_up(transport, flow, data)

    def _evict_idlest(self) -> bool:
        """Make room for a new flow by forgetting the one idle longest, if it is idle at all.

        WebRTC clients open a socket per candidate and most fall silent once
        a pair is chosen; a flood of new sources cannot push out live flows.
        """
        idlest = min(self._flows.values(), key=lambda f: f.last_seen)
        if time.monotonic() - idlest.last_seen < _EVICTABLE_IDLE_S:
            return False
        self._close_flow(idlest)
        return True

    def _close_flow(self, flow: _Flow) -> None:
        flow.closed = True
        flow.pending.clear()
        if self._flows.get(flow.client) is flow:
            del self._flows[flow.client]
        if flow.upstream is not None:
            flow.upstream.close()
            flow.upstream = None

    async def _forget_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self._idle_timeout_s / 2))
            cutoff = time.monotonic() - self._idle_timeout_s
            for flow in [f for f in self._flows.values() if f.last_seen < cutoff]:
                self._close_flow(flow)


def _host_port(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    """Command line: relay with every flow impaired until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT to listen on")
    parser.add_argument("--upstream", type=_host_port, required=True, help="server HOST:PORT")
    parser.add_argument("--loss", type=float, default=0.0, help="loss ratio each way (0-1)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def run() -> None:
        async with UdpRelay(listen=args.listen, upstream=args.upstream) as relay:
            relay.impair(both=Impairment(loss=args.loss, delay_s=args.delay_ms / 1000))
            print(f"relaying {relay.address} -> {relay.upstream[0]}; Ctrl-C stops", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except (ValidationError, LocalServerError) as exc:
        parser.exit(2, f"udp_relay: {exc.message}\n")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
