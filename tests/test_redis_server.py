"""The managed redis-server: start, private files, password, restart, no process left."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from softphone.errors import ConfigError, LocalServerError
from softphone.infra.redis_server import LocalRedisServer, RedisEndpoint, redis_from_env

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_starts_answers_and_stops_without_leftovers(tmp_path: Path) -> None:
    server = LocalRedisServer()
    async with server:
        pid, port, workdir = server.pid, server.port, server.workdir
        assert pid is not None and port is not None and _alive(pid)
        assert server.address == f"127.0.0.1:{port}"
        password = server.password.get()
        assert len(password) >= 32
        assert server.url == f"redis://:{password}@127.0.0.1:{port}/0"
        client = aioredis.Redis.from_url(server.url)
        try:
            assert await client.ping()
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            # Loopback only, protected mode on, nothing saved to disk.
            config = await client.config_get("bind")
            assert config["bind"] == "127.0.0.1"
            assert (await client.config_get("protected-mode"))["protected-mode"] == "yes"
            assert (await client.config_get("dir"))["dir"] == str(workdir)
            assert (await client.config_get("save"))["save"] == ""
        finally:
            await client.aclose()
        # The password is in no process's command line and in no log.
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert password.encode() not in f.read()
        assert password not in server.log_tail(1000)
        assert password not in repr(server) and password not in repr(server.endpoint)
    assert not server.running
    assert not _alive(pid)
    assert _port_free(port)
    # The temporary directory it made is gone with it.
    assert not workdir.exists()


async def test_files_are_private(tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    workdir.mkdir(mode=0o755)
    os.chmod(workdir, 0o755)  # as an older version, or a loose umask, left it
    log_path = tmp_path / "redis.log"
    async with LocalRedisServer(workdir=workdir, log_path=log_path, persistence=True) as server:
        client = server.client()
        try:
            await client.set("k", "v")
        finally:
            await client.aclose()
        assert _mode(workdir) == 0o700
        assert _mode(workdir / "redis.conf") == 0o600
        assert _mode(log_path) == 0o600
        assert "Ready to accept connections" in log_path.read_text()
        # The config file holds the password: readable by this user only.
        assert server.password.get() in (workdir / "redis.conf").read_text()
    # A directory it was given is left in place (with its data).
    assert workdir.is_dir()


async def test_refuses_clients_without_the_password(redis_server: LocalRedisServer) -> None:
    port = redis_server.port
    assert port is not None
    for password in (None, "wrong"):
        client = aioredis.Redis(
            host="127.0.0.1", port=port, password=password, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await client.ping()
        finally:
            await client.aclose()


async def test_restart_keeps_the_port_and_password(tmp_path: Path) -> None:
    async with LocalRedisServer() as server:
        port, pid, url = server.port, server.pid, server.url
        assert pid is not None
        await server.restart(kill=True)
        assert server.port == port and server.url == url
        assert server.pid != pid and not _alive(pid)
        client = server.client()
        try:
            assert await client.ping()
            await client.set("k", "v")
        finally:
            await client.aclose()
        pid = server.pid
        assert pid is not None
        await server.restart(kill=False)
        assert server.port == port and not _alive(pid)
        client = server.client()
        try:
            # No persistence by default: the data went with the old process.
            assert await client.get("k") is None
        finally:
            await client.aclose()


async def test_persistence_survives_a_crash(tmp_path: Path) -> None:
    async with LocalRedisServer(workdir=tmp_path / "r", persistence=True) as server:
        client = server.client()
        try:
            await client.set("k", "v")
        finally:
            await client.aclose()
        await server.restart(kill=True)
        client = server.client()
        try:
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()


async def test_a_taken_fixed_port_is_a_clear_error(redis_server: LocalRedisServer) -> None:
    server = LocalRedisServer(port=redis_server.port)
    with pytest.raises(LocalServerError) as info:
        await server.start()
    assert "Address already in use" in info.value.message
    assert not server.running


def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio\n"
        "from softphone.infra.redis_server import LocalRedisServer\n"
        "async def main():\n"
        "    s = await LocalRedisServer().start()\n"
        "    print(s.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
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
        pytest.fail("redis-server outlived a killed parent")


async def test_redis_url_from_the_environment_is_used_as_is(
    redis_server: LocalRedisServer,
) -> None:
    async with redis_from_env({"REDIS_URL": redis_server.url}) as endpoint:
        assert endpoint.url == redis_server.url
        assert endpoint.address == redis_server.address
        client = endpoint.client()
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    assert redis_server.running  # not ours to stop


async def test_without_redis_url_a_local_server_runs_for_the_block() -> None:
    async with redis_from_env({}) as endpoint:
        client = endpoint.client()
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        host, port = endpoint.host, endpoint.port
    assert host == "127.0.0.1" and _port_free(port)


def test_redis_urls_are_parsed_and_bad_ones_refused() -> None:
    e = RedisEndpoint.from_url("rediss://app:p%40ss@redis.example:6380/3")
    assert (e.host, e.port, e.db, e.username, e.tls) == ("redis.example", 6380, 3, "app", True)
    assert e.password is not None and e.password.get() == "p@ss"
    assert e.url == "rediss://app:p%40ss@redis.example:6380/3"
    assert "p@ss" not in repr(e)
    assert RedisEndpoint.from_url("redis://localhost").url == "redis://localhost:6379/0"
    for bad in ("http://x:1", "redis://", "redis://h:notaport", "redis://h/x"):
        with pytest.raises(ConfigError) as info:
            RedisEndpoint.from_url(bad + "?secret=1")
        assert "secret" not in info.value.message
