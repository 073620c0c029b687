"""LocalPostgres: a real PostgreSQL 15 in a private directory, password-only, and nothing left."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from softphone.config import Secret
from softphone.errors import ConfigError, LocalServerError, ValidationError
from softphone.infra.postgres_server import (
    PG_SYSTEM_USER,
    ExternalPostgres,
    LocalPostgres,
    database_from_env,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def _group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still alive."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return bool(found.stdout.strip())


async def _gone(pgid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the ``postgres`` user can reach (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="softphone-pgtest-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_files_are_private_and_auth_needs_the_password(postgres: LocalPostgres) -> None:
    for path in (postgres.directory, postgres.directory / "data", postgres.socket_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE(postgres.log_path.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        owner = pwd.getpwnam(PG_SYSTEM_USER).pw_uid
        assert postgres.directory.stat().st_uid == owner
        assert postgres.pid is not None
        assert Path(f"/proc/{postgres.pid}").stat().st_uid == owner  # not root
    conn = await asyncpg.connect(postgres.dsn.get())
    try:
        assert await conn.fetchval("SELECT current_database()") == postgres.database
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
    finally:
        await conn.close()
    # Another password, or none, gets nowhere: over TCP and over the socket.
    for dsn in (
        f"postgresql://{postgres.user}:wrong@{postgres.host}:{postgres.port}/{postgres.database}",
        f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{postgres.database}",
    ):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InterfaceError)):
            await asyncpg.connect(dsn)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=str(postgres.socket_dir),
            port=postgres.port,
            user=postgres.user,
            password="wrong",
            database=postgres.database,
        )
    # The password is nowhere to be read: not in reprs, not in the log.
    password = postgres.password.get()
    assert password not in repr(postgres) + str(postgres.dsn) + repr(postgres.dsn)
    assert password not in postgres.log_path.read_text(errors="replace")
    assert not list(postgres.directory.glob(".initdb-password*"))


async def test_starts_and_stops_with_nothing_left() -> None:
    server = LocalPostgres(fsync=False)
    async with server:
        print(
            f"\nLocalPostgres start-up (initdb + start + database): {server.startup_seconds:.2f} s"
        )
        pid = server.pid
        directory = server.directory
        assert pid is not None and server.running
        conn = await asyncpg.connect(server.dsn.get())
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    assert not server.running
    assert await _gone(pid), "a postgres process outlived aclose()"
    assert not directory.exists(), "the temporary cluster directory was left behind"


async def test_dies_with_its_parent() -> None:
    script = (
        "import asyncio, sys\n"
        "from softphone.infra.postgres_server import LocalPostgres\n"
        "async def main():\n"
        "    server = await LocalPostgres(fsync=False).start()\n"
        "    print(server.pid, server.directory, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    pid_text, directory = line.decode().split()
    pid = int(pid_text)
    try:
        assert _group_alive(pid)
        child.send_signal(signal.SIGKILL)
        await child.wait()
        assert await _gone(pid), "postgres outlived the process that started it"
    finally:
        if _group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


async def test_data_survive_a_crash_and_a_clean_restart(reachable_dir: Path) -> None:
    async with LocalPostgres(directory=reachable_dir / "pg") as server:
        port = server.port
        conn = await asyncpg.connect(server.dsn.get())
        await conn.execute("CREATE TABLE kept (n integer)")
        await conn.execute("INSERT INTO kept VALUES (1)")
        await conn.close()
        old_pid = server.pid
        assert old_pid is not None
        await server.restart(kill=True)
        assert await _gone(old_pid)
        assert server.port == port
        await server.restart(kill=False)
        conn = await asyncpg.connect(server.dsn.get())
        assert await conn.fetchval("SELECT sum(n) FROM kept") == 1
        await conn.close()
        password = server.password
    # A directory given by the caller is kept; the cluster starts again on it
    # with its password, and refuses another one.
    assert (reachable_dir / "pg" / "data" / "PG_VERSION").exists()
    async with LocalPostgres(directory=reachable_dir / "pg", password=password) as again:
        conn = await asyncpg.connect(again.dsn.get())
        assert await conn.fetchval("SELECT sum(n) FROM kept") == 1
        await conn.close()
    stranger = LocalPostgres(directory=reachable_dir / "pg", password=Secret("not-the-one"))
    with pytest.raises(LocalServerError, match="password it was made with"):
        await stranger.start()
    assert not stranger.running


async def test_databases_by_checked_names_only(postgres: LocalPostgres) -> None:
    dsn = await postgres.create_database("records_scratch")
    try:
        conn = await asyncpg.connect(dsn.get())
        assert await conn.fetchval("SELECT current_database()") == "records_scratch"
        await conn.close()
        with pytest.raises(LocalServerError):
            await postgres.create_database("records_scratch")
    finally:
        await postgres.drop_database("records_scratch")
    before = await _databases(postgres)
    for bad in ('x"; DROP DATABASE softphone; --', "Upper", "", "1abc", "a" * 64, "a b"):
        with pytest.raises(ValidationError):
            await postgres.create_database(bad)
        with pytest.raises(ValidationError):
            await postgres.drop_database(bad)
    with pytest.raises(ValidationError):
        await postgres.drop_database(postgres.database)
    assert await _databases(postgres) == before
    assert "records_scratch" not in before


async def _databases(server: LocalPostgres) -> set[str]:
    conn = await asyncpg.connect(server.dsn.get())
    try:
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


async def test_a_failed_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    server = LocalPostgres(bin_dir=tmp_path / "no-such-bin")
    with pytest.raises(LocalServerError, match="initdb"):
        await server.start()
    assert not server.running
    with pytest.raises(LocalServerError):
        _ = server.directory  # the temporary directory is gone again


async def test_external_database_by_url(postgres: LocalPostgres) -> None:
    env = {"DATABASE_URL": postgres.dsn.get()}
    chosen = database_from_env(env)
    assert isinstance(chosen, ExternalPostgres)
    async with chosen as external:
        conn = await asyncpg.connect(external.dsn.get())
        assert await conn.fetchval("SELECT current_database()") == postgres.database
        await conn.close()
    assert isinstance(database_from_env({}), LocalPostgres)
    password = postgres.password.get()
    assert password not in repr(chosen)
    # Wrong password, database or address: a clear error that never quotes the URL.
    for url in (
        f"postgresql://{postgres.user}:{password}x@{postgres.host}:{postgres.port}/softphone",
        f"postgresql://{postgres.user}:{password}@{postgres.host}:{postgres.port}/nope",
        f"postgresql://{postgres.user}:{password}@127.0.0.1:1/softphone",
    ):
        with pytest.raises(ConfigError) as info:
            await ExternalPostgres(url, connect_timeout=10.0).start()
        assert password not in str(info.value) and info.value.__cause__ is None
    for url in (
        "",
        "mysql://u:p@h/db",
        f"postgresql://u:{password}@h:notaport/db",
        "postgresql://h",
    ):
        with pytest.raises(ConfigError) as info:
            ExternalPostgres(url)
        assert password not in str(info.value)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        ExternalPostgres(env={})
