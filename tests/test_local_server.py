"""The managed livekit-server: start, readiness, clean stop, no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from softphone.errors import LocalServerError
from softphone.infra.local_server import LocalLiveKitServer, ServerPorts, free_port
from softphone.infra.server_binary import (
    LIVEKIT_SERVER_VERSION,
    binary_version,
    build_server_binary,
    ensure_server_binary,
    find_server_binary,
)

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_pinned_binary_is_found() -> None:
    path = ensure_server_binary()
    assert binary_version(path) == LIVEKIT_SERVER_VERSION


async def test_server_starts_ready_and_stops_without_leftovers(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = LocalLiveKitServer(binary=ensure_server_binary(), log_path=log)
    async with server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        assert server.ports is not None
        port = server.ports.signal
        assert server.url == f"ws://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.http_url)).text.strip() == "OK"
        assert server.startup_seconds is not None and server.startup_seconds > 0
        assert len(server.api_secret.get()) >= 32
        assert server.api_secret.get() not in repr(server.api_secret)
    assert not server.running
    assert not _alive(pid)
    assert _port_free(port)
    text = log.read_text()
    assert "starting LiveKit server" in text
    # The secret is handed over in the environment, never in the command line or log.
    assert server.api_secret.get() not in text


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from softphone.infra.local_server import LocalLiveKitServer\n"
        "from softphone.infra.server_binary import ensure_server_binary\n"
        "async def main():\n"
        "    s = LocalLiveKitServer(binary=ensure_server_binary(), log_path=Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    print(s.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(log)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    server_pid = int(proc.stdout.readline())
    assert _alive(server_pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(server_pid):
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("the server outlived a killed parent:\n" + log.read_text()[-2000:])


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    fake = tmp_path / "livekit-server"
    fake.write_text("#!/bin/sh\necho 'config error: bad things' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = LocalLiveKitServer(binary=fake, log_path=tmp_path / "log")
    with pytest.raises(LocalServerError) as info:
        await server.start()
    assert "exited with code 3" in info.value.message
    assert "config error: bad things" in info.value.message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's port range")
def test_free_ports_are_outside_the_range_of_outgoing_connections() -> None:
    """A server restarted on its ports (a LiveKit node, a replica) finds them
    free only if no client socket on the machine took one meanwhile: CI once
    failed on a port taken that way between a stop and a restart."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    picked = [free_port() for _ in range(50)] + [free_port(socket.SOCK_DGRAM) for _ in range(50)]
    assert all(1024 <= port < low for port in picked), (low, high, picked)
    assert len(set(picked)) > 1
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        client.connect(server.getsockname())  # the premise: clients draw from the range
        assert low <= client.getsockname()[1] <= high


async def test_a_taken_port_is_named_even_without_a_log_file() -> None:
    """livekit-server exits with code 0 on any error; only its output says a port was taken.

    That is what makes a start on free ports try again (a port can be taken
    between choosing and binding it), so the output is kept without a log
    path too, in a private file that goes with the server.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ServerPorts(signal=port, rtc_tcp=free_port(), rtc_udp=free_port(socket.SOCK_DGRAM))
        server = LocalLiveKitServer(binary=ensure_server_binary(), ports=ports)
        with pytest.raises(LocalServerError) as info:
            await server.start()
    assert "address already in use" in info.value.message
    assert server.log_tail() == "(no log file)"  # gone with the server


def test_missing_binary_and_no_go_is_a_clear_error(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert find_server_binary(env=env) is None
    with pytest.raises(LocalServerError) as info:
        build_server_binary(env=env)
    assert "Go is not installed" in info.value.message
    assert LIVEKIT_SERVER_VERSION in info.value.message


def test_explicit_binary_that_does_not_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalServerError):
        find_server_binary(str(tmp_path / "nope"))


def test_wrong_version_on_path_is_not_used(tmp_path: Path) -> None:
    other = tmp_path / "livekit-server"
    other.write_text("#!/bin/sh\necho 'livekit-server version 0.0.1'\n")
    other.chmod(0o755)
    env = {"PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert find_server_binary(env=env) is None
