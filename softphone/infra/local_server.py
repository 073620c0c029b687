"""A local ``livekit-server`` in dev mode, as a managed child process.

Used by the app when no LiveKit URL is configured (embedded mode) and by the
test suite's session fixture. The server listens on free loopback ports
(signal/HTTP, RTC over TCP, RTC over one UDP port), its log goes to a file,
and it is stopped with SIGTERM (SIGKILL after a grace period). On Linux the
child gets SIGKILL if this process dies, so no server outlives the app (a dev
server has no state worth a graceful stop, and livekit-server 1.13.5 can hang
on a SIGTERM that arrives while it is still starting).

Several servers on one Redis make a multi-node deployment (LiveKit's own
routing): give each the same ``redis_address``, ``redis_password``,
``api_key`` and ``api_secret``. The Redis password, like the API secret, is
handed over in the environment, which only this user can read, never on the
command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from softphone.config import Secret
from softphone.errors import LocalServerError
from softphone.http_client import async_client

log = logging.getLogger(__name__)

DEV_API_KEY = "devkey"
_PR_SET_PDEATHSIG = 1
# livekit-server reads these from the environment and lets them override the
# config: an inherited one would silently join a server to someone else's Redis.
_OVERRIDING_ENV = ("REDIS_HOST", "REDIS_PASSWORD", "NODE_IP", "UDP_PORT", "LIVEKIT_REGION")
# Every node of a local cluster runs on the same machine and sees the same
# load: dropping "overloaded" nodes would only make placement random.
_NO_SYSLOAD_LIMIT = 1_000_000.0


@dataclasses.dataclass(frozen=True)
class ServerPorts:
    """The loopback ports one local server listens on."""

    signal: int
    rtc_tcp: int
    rtc_udp: int


@dataclasses.dataclass(frozen=True)
class Region:
    """A region of a multi-node deployment and where it is (for LiveKit's distances)."""

    name: str
    lat: float
    lon: float


# Listening ports are drawn from below the range the OS hands out to outgoing
# connections: a port from that range can be taken, between a server's stop
# and its restart on the same port, by any client socket on the machine (and
# held for a minute in TIME_WAIT after it closes).
_LISTEN_PORTS_FROM = 10_000
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_IANA_EPHEMERAL_START = 49_152


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _IANA_EPHEMERAL_START


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """Return a port free now on ``host`` for the socket kind, outside the
    OS's range for outgoing connections (so it stays free for a restart)."""
    span = _ephemeral_start() - _LISTEN_PORTS_FROM
    for _ in range(100 if span >= 1000 else 0):  # else: an odd range, the OS picks
        port = _LISTEN_PORTS_FROM + secrets.randbelow(span)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pick_ports(host: str) -> ServerPorts:
    ports: set[int] = set()
    while len(ports) < 2:
        ports.add(free_port(socket.SOCK_STREAM, host))
    signal_port, tcp_port = sorted(ports)
    udp = free_port(socket.SOCK_DGRAM, host)
    return ServerPorts(signal=signal_port, rtc_tcp=tcp_port, rtc_udp=udp)


def _private_opener(path: str, flags: int) -> int:
    """``open`` opener for files readable by the user only (0600).

    The mode is set again because an existing file (from an older version)
    keeps its own, and a new file's is cut by the umask.
    """
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


# Looked up once, here: loading a library in a forked child of a process
# with threads (the LiveKit SDK's) can deadlock on the loader's lock.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: SIGKILL when the parent dies. Calls nothing but prctl."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


async def stop_process(
    proc: subprocess.Popen[bytes], grace: float, *, stop: signal.Signals = signal.SIGTERM
) -> None:
    """Stop a managed child: ``stop`` to it, SIGKILL to its group after ``grace`` seconds.

    No grace is a crash: SIGKILL to the whole group at once.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if grace > 0:
                os.kill(proc.pid, stop)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        # Popen has no awaitable wait; poll briefly (a stop takes a few ms to ~100 ms).
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def server_config(
    host: str,
    ports: ServerPorts,
    *,
    node_ip: str | None = None,
    redis_address: str | None = None,
    webhook_urls: Sequence[str] = (),
    api_key: str = DEV_API_KEY,
    region: str | None = None,
    regions: Sequence[Region] = (),
    media_only_at_node_ip: bool = False,
) -> str:
    """The YAML config body for a loopback-only dev server on ``ports``.

    Args:
        host: Loopback address the server binds.
        ports: Its ports.
        node_ip: The address advertised to clients for media (default
            ``host``); e.g. a relay's that forwards to ``host``.
        redis_address: ``host:port`` of the Redis that makes this server one
            node of a multi-node deployment (LiveKit's own routing). Its
            password, if any, goes in the environment (``REDIS_PASSWORD``).
        webhook_urls: Where the server POSTs its webhooks, signed with ``api_key``.
        api_key: The key webhooks are signed with.
        region: This node's region.
        regions: With ``region``, every region of the deployment: a new room
            then goes to a node in the region nearest to the node asked to
            create it (LiveKit's ``regionaware`` node selector), so in a
            cluster with one node per region, to that very node. Without
            them LiveKit places a room on a node picked at random.
        media_only_at_node_ip: Offer clients no media path but UDP to
            ``node_ip`` (e.g. a relay that impairs it): no ICE/TCP, ICE lite
            (no checks of the server's own that could find a direct path,
            as a peer-reflexive candidate), and IPv6 candidates in the
            discard prefix (``100::1``, RFC 6666), so no usable IPv6 one.
    """
    if media_only_at_node_ip:
        media = (
            "  tcp_port: 0\n"
            f"  udp_port: {ports.rtc_udp}\n"
            f"  node_ip: {node_ip or host},100::1\n"
            "  use_ice_lite: true\n"
        )
    else:
        media = (
            f"  tcp_port: {ports.rtc_tcp}\n"
            f"  udp_port: {ports.rtc_udp}\n"
            f"  node_ip: {node_ip or host}\n"
        )
    body = (
        f"port: {ports.signal}\n"
        f'bind_addresses: ["{host}"]\n'
        "rtc:\n" + media + "  use_external_ip: false\n"
        "  enable_loopback_candidate: true\n"
        "logging:\n"
        "  level: info\n"
    )
    if redis_address:
        body += f"redis:\n  address: {redis_address}\n"
    if region:
        body += f"region: {json.dumps(region)}\n"
    if region and regions:
        if region not in {r.name for r in regions}:
            raise LocalServerError(f"region {region!r} is not one of the regions given")
        sites = "".join(
            f"    - {{name: {json.dumps(r.name)}, lat: {r.lat}, lon: {r.lon}}}\n" for r in regions
        )
        body += (
            "node_selector:\n"
            "  kind: regionaware\n"
            "  sort_by: random\n"
            "  algorithm: lowest\n"
            f"  sysload_limit: {_NO_SYSLOAD_LIMIT}\n"
            "  regions:\n" + sites
        )
    if webhook_urls:
        urls = ", ".join(json.dumps(u) for u in webhook_urls)
        body += f"webhook:\n  api_key: {api_key}\n  urls: [{urls}]\n"
    return body


async def start_on_free_ports(
    start_once: Callable[[], Awaitable[None]],
    clean_up: Callable[[], Awaitable[None]],
    attempts: int = 3,
) -> None:
    """``start_once()`` until it works; after a failure ``clean_up()``, and try
    again (on the new ports ``start_once`` picks) only when the failure was a
    port taken between choosing it and binding it.

    Raises:
        LocalServerError: The last failure.
    """
    for attempt in range(attempts):
        try:
            await start_once()
            return
        except LocalServerError as exc:
            await clean_up()
            if "address already in use" not in exc.message or attempt == attempts - 1:
                raise


class LocalLiveKitServer:
    """One ``livekit-server --dev`` on free loopback ports.

    The server gets API key ``devkey`` and a random secret made for this
    instance (``api_key``, ``api_secret``), unless they are given (the nodes
    of one deployment share them).

    Use as ``async with LocalLiveKitServer(binary=...) as server:``; the server
    is ready (its HTTP endpoint answers) when the block starts and stopped,
    with no process left, when it ends.

    Args:
        binary: Path of the pinned livekit-server binary.
        log_path: File the server's output goes to (default: a file next to
            nothing; output is discarded).
        host: Loopback address to bind.
        ready_timeout: Seconds to wait for the server to answer.
        node_ip: Media address advertised to clients (default ``host``).
        redis_address: ``host:port`` of a Redis: this server is then one node
            of a multi-node deployment (the same Redis on every node).
        redis_password: That Redis's password.
        webhook_urls: Where the server sends its webhooks.
        ports: Fixed ports (default: free ones picked at start).
        api_key: The API key (default ``devkey``).
        api_secret: The API secret (default: a new random one).
        region: This node's region (see :func:`server_config`).
        regions: The deployment's regions: a room goes to the node in the
            region nearest to the node asked to create it.
        media_only_at_node_ip: Media only by UDP to ``node_ip`` (see
            :func:`server_config`), e.g. through a relay that impairs it.
    """

    def __init__(
        self,
        *,
        binary: Path,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 20.0,
        node_ip: str | None = None,
        redis_address: str | None = None,
        webhook_urls: Sequence[str] = (),
        ports: ServerPorts | None = None,
        redis_password: Secret | None = None,
        api_key: str = DEV_API_KEY,
        api_secret: Secret | None = None,
        region: str | None = None,
        regions: Sequence[Region] = (),
        media_only_at_node_ip: bool = False,
    ) -> None:
        if redis_password is not None and not redis_address:
            raise LocalServerError("a Redis password was given without a Redis address")
        if region and regions and region not in {r.name for r in regions}:
            raise LocalServerError(f"region {region!r} is not one of the regions given")
        if api_secret is not None and len(api_secret.get()) < 32:
            # livekit-server refuses shorter secrets outside dev mode; a weak
            # one would let anyone who guesses it mint tokens.
            raise LocalServerError("the API secret must be at least 32 characters")
        self._binary = binary
        self._node_ip = node_ip
        self._redis_address = redis_address
        self._redis_password = redis_password
        self._region = region
        self._regions = tuple(regions)
        self._media_only_at_node_ip = media_only_at_node_ip
        self._webhook_urls = tuple(webhook_urls)
        self._fixed_ports = ports
        self._log_path = log_path
        # Without a log path the output still goes to a private file of our
        # own, deleted when the server stops: livekit-server exits with code 0
        # on any error (a port taken, a bad config), and only its output says
        # which, and so whether starting again on other ports helps.
        self._own_log: Path | None = None
        self._host = host
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.api_key = api_key
        # A fresh strong secret per server, so that nobody else on the machine
        # can mint tokens for it (dev mode's placeholder "secret" is public).
        self.api_secret = api_secret or Secret(secrets.token_urlsafe(32))
        self.ports: ServerPorts | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://{self._host}:{self._require_ports().signal}"

    @property
    def http_url(self) -> str:
        """The HTTP URL of the server API."""
        return f"http://{self._host}:{self._require_ports().signal}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _require_ports(self) -> ServerPorts:
        if self.ports is None:
            raise LocalServerError("the local LiveKit server has not been started")
        return self.ports

    async def start(self, attempts: int = 3) -> LocalLiveKitServer:
        """Start the server and wait until it answers.

        A port taken between choosing and binding is retried with new ports.

        Raises:
            LocalServerError: It would not start; the message has its last log lines.
        """
        await start_on_free_ports(self._start_once, self.aclose, attempts)
        return self

    async def _start_once(self) -> None:
        self.ports = self._fixed_ports or _pick_ports(self._host)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="livekit-server-", suffix=".log")  # 0600
            os.close(fd)
            self._log_path = self._own_log = Path(name)
        # Opening a log file and forking are quick, bounded calls; the wait for
        # readiness below is what must not block, and it does not.
        out = (
            # The log names rooms and participants: the user's only (0600).
            open(self._log_path, "ab", opener=_private_opener)  # noqa: SIM115, ASYNC230
            if self._log_path
            else subprocess.DEVNULL
        )
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [
                    str(self._binary),
                    "--dev",
                    "--config-body",
                    server_config(
                        self._host,
                        self.ports,
                        node_ip=self._node_ip,
                        redis_address=self._redis_address,
                        webhook_urls=self._webhook_urls,
                        api_key=self.api_key,
                        region=self._region,
                        regions=self._regions,
                        media_only_at_node_ip=self._media_only_at_node_ip,
                    ),
                ],
                stdin=subprocess.DEVNULL,
                # Secrets go through the environment, not argv, which any local user can read.
                env=self._environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise LocalServerError(f"could not run {self._binary}: {exc.strerror}") from exc
        finally:
            if not isinstance(out, int):
                out.close()
        deadline = started + self._ready_timeout
        async with async_client(timeout=1.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise LocalServerError(
                        f"livekit-server exited with code {self._proc.returncode} at start:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.http_url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"livekit-server did not answer within {self._ready_timeout:.0f} s:\n"
                        + self.log_tail()
                    )
                await asyncio.sleep(0.02)
        self.startup_seconds = time.monotonic() - started
        log.info(
            "local LiveKit server ready",
            extra={"url": self.url, "ms": round(self.startup_seconds * 1000)},
        )

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OVERRIDING_ENV}
        env["LIVEKIT_KEYS"] = f"{self.api_key}: {self.api_secret.get()}"
        if self._redis_password is not None:
            env["REDIS_PASSWORD"] = self._redis_password.get()
        return env

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, for error messages."""
        if not self._log_path or not self._log_path.exists():
            return "(no log file)"
        text = self._log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc, grace)
        if self._own_log is not None:
            self._own_log.unlink(missing_ok=True)
            self._log_path = self._own_log = None

    async def restart(self, *, kill: bool = True, down_s: float = 0.0) -> None:
        """Stop the server (SIGKILL, or a clean stop) and start it on the same ports.

        Args:
            kill: Kill it with SIGKILL (a crash) rather than SIGTERM.
            down_s: How long it stays down before starting again.
        """
        self._fixed_ports = self._require_ports()
        await self.aclose(grace=0.0 if kill else 5.0)
        await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> LocalLiveKitServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
