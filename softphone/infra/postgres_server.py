"""PostgreSQL as a managed child process, or an external one by URL.

The service's records (:mod:`softphone.store.records`) live in PostgreSQL.
Tests and a single-machine stack get :class:`LocalPostgres`: Debian's
PostgreSQL 15 binaries, a cluster made with ``initdb`` in a private (0700)
directory, listening on a free loopback port with its unix socket in that
directory, and password (SCRAM) authentication for a password generated per
instance that is never logged nor put on a command line. PostgreSQL refuses
to run as root, so under root the cluster belongs to the ``postgres`` system
user and ``initdb``/``postgres`` run as that user. The server gets SIGKILL if
this process dies; :meth:`LocalPostgres.aclose` stops it cleanly (fast
shutdown, SIGINT) and leaves no process behind.

A deployment names its own database with ``DATABASE_URL``
(:class:`ExternalPostgres`); :func:`database_from_env` picks one or the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import quote, urlsplit

import asyncpg

from softphone.config import Secret
from softphone.errors import ConfigError, LocalServerError, ValidationError
from softphone.infra.local_server import (
    _die_with_parent,
    _private_opener,
    free_port,
    stop_process,
)

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
# Who owns and runs the cluster when this process is root.
PG_SYSTEM_USER = "postgres"
DATABASE_URL_ENV = "DATABASE_URL"
# Database and role names this module creates: plain lower-case identifiers
# (they go into CREATE DATABASE, which takes no bound parameters).
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# A SIGINT (fast shutdown) normally stops the server in well under a second.
_STOP_GRACE_S = 30.0


class PostgresDatabase(Protocol):
    """A PostgreSQL database the service can use: local and managed, or external."""

    @property
    def dsn(self) -> Secret:
        """The connection URL (it holds the password: a :class:`Secret`)."""
        ...

    async def start(self) -> PostgresDatabase:
        """Make the database ready to use (start it, or check that it answers)."""
        ...

    async def aclose(self) -> None:
        """Release it (stop a managed server; nothing for an external one)."""
        ...


@dataclasses.dataclass(frozen=True)
class _RunAs:
    """The system user the server runs as (None: this process's own)."""

    uid: int
    gid: int


def _run_as() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError as exc:
        raise LocalServerError(
            f"PostgreSQL does not run as root and there is no {PG_SYSTEM_USER!r} user "
            "to run it as (install Debian's postgresql package)"
        ) from exc
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _dsn(user: str, password: Secret, host: str, port: int, database: str) -> Secret:
    return Secret(
        f"postgresql://{quote(user, safe='')}:{quote(password.get(), safe='')}"
        f"@{host}:{port}/{quote(database, safe='')}"
    )


def _check_name(name: str, field: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            field, "must be 1-63 lower-case letters, digits or '_', not starting with a digit"
        )
    return name


class LocalPostgres:
    """One PostgreSQL server in a private directory on a free loopback port.

    Use as ``async with LocalPostgres() as pg:`` and connect with
    ``pg.dsn.get()``; the server answers and the database exists when the
    block starts, and it is stopped, with no process left, when it ends.

    The cluster's superuser is ``user``, with a password made for this
    instance (``password``). A directory given by the caller is kept (a later
    instance may start on it again with the same ``password``); a temporary
    one is removed by :meth:`aclose`.

    Args:
        directory: The cluster's home: ``data/`` (the cluster), ``run/`` (the
            unix socket) and the log by default. Created 0700 if missing;
            under root the ``postgres`` user must be able to reach it.
            Default: a new temporary directory.
        password: The superuser's password (default: a new random one). An
            existing cluster in ``directory`` needs the one it was made with.
        database: The database :attr:`dsn` names (created at start if missing).
        user: The superuser's name.
        host: Loopback address to listen on.
        port: Fixed port (default: a free one picked at start).
        log_path: File the server's output goes to (0600; default
            ``directory/postgres.log``).
        bin_dir: Where ``initdb`` and ``postgres`` are.
        fsync: Write through to disk (off only for throw-away test data).
        ready_timeout: Seconds to wait for the server to answer.
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        password: Secret | None = None,
        database: str = "softphone",
        user: str = "softphone",
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        bin_dir: Path = PG_BIN_DIR,
        fsync: bool = True,
        ready_timeout: float = 60.0,
    ) -> None:
        self.database = _check_name(database, "database")
        self.user = _check_name(user, "user")
        self.password = password or Secret(secrets.token_urlsafe(32))
        self.host = host
        self._fixed_port = port
        self._given_directory = directory
        self._directory: Path | None = None
        self._log_path = log_path
        self._bin_dir = bin_dir
        self._fsync = fsync
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.startup_seconds: float | None = None

    def __repr__(self) -> str:
        return f"LocalPostgres(port={self.port}, database={self.database!r})"

    @property
    def dsn(self) -> Secret:
        """The URL of :attr:`database` (``postgresql://user:password@host:port/db``)."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> Secret:
        """The URL of another database of this server."""
        return _dsn(self.user, self.password, self.host, self._require_port(), database)

    @property
    def directory(self) -> Path:
        """The cluster's home directory."""
        if self._directory is None:
            raise LocalServerError("the local PostgreSQL server has not been started")
        return self._directory

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket is (0700: reachable by its owner only)."""
        return self.directory / "run"

    @property
    def pid(self) -> int | None:
        """The server's (postmaster's) process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _require_port(self) -> int:
        if self.port is None:
            raise LocalServerError("the local PostgreSQL server has not been started")
        return self.port

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._log_path or self.directory / "postgres.log"

    async def start(self, attempts: int = 3) -> LocalPostgres:
        """Create the cluster if needed, start the server and wait until it answers.

        A port taken between choosing and binding is retried with a new one.

        Raises:
            LocalServerError: It would not start; the message has its last log lines.
        """
        if self.running:
            return self
        started = time.monotonic()
        fresh = self._directory is None
        try:
            run_as = _run_as()
            self._prepare_directory(run_as)
            if not (self.directory / "data" / "PG_VERSION").exists():
                await self._initdb(run_as)
            for attempt in range(attempts):
                try:
                    await self._start_once(run_as)
                    break
                except LocalServerError as exc:
                    await self._stop(grace=0.0)
                    retry = self._fixed_port is None and "already in use" in exc.message
                    if not retry or attempt == attempts - 1:
                        raise
            await self.create_database(self.database, exist_ok=True)
        except BaseException:
            # A cluster made by this call goes; one that was there stays.
            await self._stop(grace=0.0)
            if fresh:
                await self._remove_directory()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _prepare_directory(self, run_as: _RunAs | None) -> None:
        if self._directory is None:
            if self._given_directory is not None:
                self._given_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._directory = self._given_directory
            else:
                self._directory = Path(tempfile.mkdtemp(prefix="softphone-pg-"))
        top = self._directory
        run = top / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        for path in (top, run):
            os.chmod(path, 0o700)
            if run_as is not None:
                os.chown(path, run_as.uid, run_as.gid)

    async def _initdb(self, run_as: _RunAs | None) -> None:
        data = self.directory / "data"
        # initdb reads the password from a file; it exists only while initdb
        # runs, private to the cluster's owner inside the private directory.
        pwfile = self.directory / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            os.write(fd, self.password.get().encode() + b"\n")
        finally:
            os.close(fd)
        args = [
            str(self._bin_dir / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            self.user,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-instructions",
        ]
        if not self._fsync:
            args.append("--no-sync")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.directory,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
            out, _ = await proc.communicate()
        except OSError as exc:
            raise LocalServerError(f"could not run initdb: {exc.strerror}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-15:])
            hint = (
                f" (the {PG_SYSTEM_USER} user must be able to reach {self.directory})"
                if run_as is not None
                else ""
            )
            raise LocalServerError(f"initdb failed with code {proc.returncode}{hint}:\n{tail}")

    async def _start_once(self, run_as: _RunAs | None) -> None:
        self.port = self._fixed_port or free_port()
        args = [
            str(self._bin_dir / "postgres"),
            "-D",
            str(self.directory / "data"),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            f"fsync={'on' if self._fsync else 'off'}",
            "-c",
            "logging_collector=off",
        ]
        # Opening the log and forking are quick, bounded calls; the wait for
        # readiness below is what must not block, and it does not.
        out = open(self.log_path, "ab", opener=_private_opener)  # noqa: SIM115, ASYNC230
        log_start = out.tell()
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=self.directory,
                start_new_session=True,
                # Applied after the switch of user: a credential change clears it.
                preexec_fn=_die_with_parent,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        except OSError as exc:
            raise LocalServerError(f"could not run postgres: {exc.strerror}") from exc
        finally:
            out.close()
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self._proc.poll() is not None:
                raise LocalServerError(
                    f"postgres exited with code {self._proc.returncode} at start:\n"
                    + self.log_tail(since=log_start)
                )
            try:
                conn = await asyncpg.connect(
                    self.dsn_for("postgres").get(), timeout=2.0, command_timeout=10.0
                )
            except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
                raise LocalServerError(
                    "postgres refused the password: an existing cluster in "
                    f"{self.directory} needs the password it was made with"
                ) from None
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"postgres did not answer within {self._ready_timeout:.0f} s:\n"
                        + self.log_tail(since=log_start)
                    ) from None
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return

    async def create_database(self, name: str, *, exist_ok: bool = False) -> Secret:
        """Create a database on this server and return its URL.

        Args:
            name: Lower-case letters, digits and ``_``.
            exist_ok: Do nothing if it exists already.

        Raises:
            ValidationError: A bad name.
            LocalServerError: The server refused (e.g. it exists and not ``exist_ok``).
        """
        _check_name(name, "name")
        async with self._admin() as conn:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists and exist_ok:
                return self.dsn_for(name)
            try:
                # The name was checked above: CREATE DATABASE takes no parameters.
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.PostgresError as exc:
                raise LocalServerError(f"could not create database {name}: {exc}") from None
        return self.dsn_for(name)

    async def drop_database(self, name: str) -> None:
        """Drop a database of this server (its open connections are closed first)."""
        _check_name(name, "name")
        if name == self.database:
            raise ValidationError("name", "is the server's own database")
        async with self._admin() as conn:
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except asyncpg.PostgresError as exc:
                raise LocalServerError(f"could not drop database {name}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[asyncpg.Connection]:
        if not self.running:
            raise LocalServerError("the local PostgreSQL server is not running")
        try:
            conn = await asyncpg.connect(
                self.dsn_for("postgres").get(), timeout=10.0, command_timeout=60.0
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LocalServerError(
                f"could not connect to the local PostgreSQL server: {type(exc).__name__}"
            ) from None
        try:
            yield conn
        finally:
            await conn.close()

    def log_tail(self, lines: int = 15, *, since: int = 0) -> str:
        """The last lines of the server's log (from byte ``since``), for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log file)"
        return "\n".join(text.strip().splitlines()[-lines:])

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the server but keep its cluster and port: :meth:`start` brings it back.

        Args:
            kill: SIGKILL (a crash; it recovers from its WAL at the next start)
                rather than a fast shutdown.
        """
        self._fixed_port = self._require_port()
        await self._stop(grace=0.0 if kill else _STOP_GRACE_S)

    async def restart(self, *, kill: bool = True, down_s: float = 0.0) -> None:
        """Stop the server (SIGKILL: a crash; or a clean stop) and start it on the same port.

        The data survive either way.

        Args:
            kill: Kill it with SIGKILL rather than a fast shutdown.
            down_s: How long it stays down before starting again.
        """
        await self.stop(kill=kill)
        await asyncio.sleep(down_s)
        await self.start()

    async def _stop(self, grace: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGINT is PostgreSQL's fast shutdown: sessions end, data are flushed.
        await stop_process(proc, grace, stop=signal.SIGINT)
        # Backends leave when the postmaster does; make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def _remove_directory(self) -> None:
        directory = self._directory
        if directory is not None and self._given_directory is None:
            self._directory = None
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)

    async def aclose(self) -> None:
        """Stop the server (fast shutdown, SIGKILL if it hangs); remove a temporary directory."""
        await self._stop(grace=_STOP_GRACE_S)
        await self._remove_directory()

    async def __aenter__(self) -> LocalPostgres:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ExternalPostgres:
    """A PostgreSQL database run by someone else, named by URL.

    Args:
        url: ``postgresql://user:password@host:port/database`` (default: the
            ``DATABASE_URL`` environment variable).
        env: The environment to read when ``url`` is not given.
        connect_timeout: Seconds :meth:`start` waits for the database to answer.

    Raises:
        ConfigError: No URL, or not a PostgreSQL URL (the message never quotes it).
    """

    def __init__(
        self,
        url: Secret | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if url is None:
            raw = (os.environ if env is None else env).get(DATABASE_URL_ENV, "")
            url = Secret(raw) if raw else None
        if isinstance(url, str):
            url = Secret(url)
        if url is None or not url.get():
            raise ConfigError(f"set {DATABASE_URL_ENV} to the records database's URL")
        parts = urlsplit(url.get())
        if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
            raise ConfigError(
                f"{DATABASE_URL_ENV} must be postgresql://user:password@host:port/database"
            )
        self._url = url
        self._connect_timeout = connect_timeout
        self.startup_seconds: float | None = None
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            raise ConfigError(f"{DATABASE_URL_ENV} has a bad port") from None
        # Where it is, without user or password: for messages.
        self.where = f"{parts.hostname or 'localhost'}{port}{parts.path}"

    def __repr__(self) -> str:
        return f"ExternalPostgres({self.where!r})"

    @property
    def dsn(self) -> Secret:
        """The database's URL."""
        return self._url

    async def start(self) -> ExternalPostgres:
        """Check that the database answers.

        Raises:
            ConfigError: It does not (wrong address, credentials or database).
        """
        started = time.monotonic()
        try:
            conn = await asyncpg.connect(self._url.get(), timeout=self._connect_timeout)
            await conn.close()
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            # from None: a driver's message may quote the URL, password included.
            raise ConfigError(
                f"cannot use the database at {self.where} ({DATABASE_URL_ENV}): "
                f"{type(exc).__name__}"
            ) from None
        self.startup_seconds = time.monotonic() - started
        return self

    async def aclose(self) -> None:
        """Nothing to release: the database is someone else's."""

    async def __aenter__(self) -> ExternalPostgres:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def database_from_env(
    env: Mapping[str, str] | None = None, *, directory: Path | None = None
) -> ExternalPostgres | LocalPostgres:
    """The database named by ``DATABASE_URL``, or else a :class:`LocalPostgres` (not started).

    Args:
        env: The environment to read (default ``os.environ``).
        directory: The local cluster's directory, when there is no URL.
    """
    env = os.environ if env is None else env
    if env.get(DATABASE_URL_ENV):
        return ExternalPostgres(env=env)
    return LocalPostgres(directory=directory)


def _child_env() -> dict[str, str]:
    """A small environment for the server: no secrets of this process's, a known locale."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    env["TZ"] = "UTC"
    return env
