"""A local ``redis-server`` as a managed child process, or an external Redis by URL.

The service's live state and LiveKit's multi-node routing both live in Redis.
:class:`LocalRedisServer` runs Debian's ``/usr/bin/redis-server`` on a free
loopback port, the way :class:`~softphone.infra.local_server.LocalLiveKitServer`
runs livekit-server: in a private directory (0700) holding its config file
(0600), its log and any data; bound to loopback with protected mode on; and
with a random password, so no other local user can read or change the state.
The password goes in the config file, never on the command line (which any
local user can read) nor in a log. The server dies with this process.

:func:`redis_from_env` is the one entry point for code that needs "a Redis":
the one ``REDIS_URL`` names, used as-is, or else a local one started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from softphone.config import Secret
from softphone.errors import ConfigError, LocalServerError
from softphone.infra.local_server import (
    _die_with_parent,
    _private_opener,
    free_port,
    stop_process,
)

log = logging.getLogger(__name__)

REDIS_SERVER_BIN = Path("/usr/bin/redis-server")
REDIS_URL_ENV = "REDIS_URL"
_CONFIG_NAME = "redis.conf"
_LOG_NAME = "redis.log"


@dataclasses.dataclass(frozen=True)
class RedisEndpoint:
    """Where a Redis is and how to log in; the password never shows in a repr.

    Attributes:
        host: Host name or address.
        port: TCP port.
        password: The password (``requirepass`` or the ACL user's), if any.
        db: Database number.
        username: ACL user name (empty: the default user).
        tls: Whether the connection uses TLS (``rediss://``).
    """

    host: str
    port: int
    password: Secret | None = None
    db: int = 0
    username: str = ""
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """Parse a ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``) URL.

        Raises:
            ConfigError: The URL is not one (the message never repeats it:
                it may hold a password).
        """
        try:
            parts = urlsplit(url.strip())
            port = parts.port or 6379
        except ValueError as exc:
            raise ConfigError(f"{REDIS_URL_ENV} is not a valid Redis URL") from exc
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError(
                f"{REDIS_URL_ENV} must look like redis://:password@host:port/0 (or rediss://)"
            )
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(f"{REDIS_URL_ENV}: the database after the host must be a number")
        return cls(
            host=parts.hostname,
            port=port,
            password=Secret(unquote(parts.password)) if parts.password else None,
            db=int(path or 0),
            username=unquote(parts.username or ""),
            tls=parts.scheme == "rediss",
        )

    @property
    def address(self) -> str:
        """``host:port``, as LiveKit's ``redis.address`` wants it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The full URL, password included: hand it to a client, never to a log."""
        auth = ""
        if self.password is not None or self.username:
            pw = quote(self.password.get(), safe="") if self.password is not None else ""
            auth = f"{quote(self.username, safe='')}:{pw}@"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.address}/{self.db}"

    def client(self, **options: Any) -> aioredis.Redis:
        """A new ``redis.asyncio`` client for this endpoint (the caller closes it)."""
        return aioredis.Redis.from_url(self.url, **options)


def _config(host: str, port: int, directory: Path, password: Secret, *, persistence: bool) -> str:
    if any(c in str(directory) for c in '"\\\n'):
        raise LocalServerError(
            "the Redis directory's path may not hold quotes, backslashes or newlines"
        )
    lines = [
        f"bind {host}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        "supervised no",
        f'dir "{directory}"',
        f"requirepass {password.get()}",
        'logfile ""',
        "loglevel notice",
        'save ""',
        f"appendonly {'yes' if persistence else 'no'}",
        # Every write on disk before it is acknowledged: a restart with
        # kill=True (a crash) loses nothing the clients were told was stored.
        "appendfsync always",
        "enable-protected-configs no",
        "enable-debug-command no",
        "enable-module-command no",
    ]
    return "\n".join(lines) + "\n"


class LocalRedisServer:
    """One ``redis-server`` on a free loopback port, with a random password.

    Use as ``async with LocalRedisServer() as redis_server:``; the server
    answers PING (with its password) when the block starts and is stopped,
    with no process left, when it ends.

    Args:
        binary: The redis-server executable.
        workdir: Its private directory (made 0700; default: a new temporary
            one, removed at :meth:`aclose`). It holds the config file, the
            log (unless ``log_path``) and any data.
        log_path: File the server's output goes to (0600; default: in ``workdir``).
        host: Loopback address to bind.
        port: Fixed port (default: a free one, picked at start).
        persistence: Keep data across restarts (append-only file, synced on
            every write); off by default: the data dies with the server.
        ready_timeout: Seconds to wait for the server to answer.
    """

    def __init__(
        self,
        *,
        binary: Path = REDIS_SERVER_BIN,
        workdir: Path | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        persistence: bool = False,
        ready_timeout: float = 10.0,
    ) -> None:
        self._binary = binary
        self._workdir = workdir
        self._own_workdir = workdir is None
        self._log_path = log_path
        self._host = host
        self._fixed_port = port
        self._persistence = persistence
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._password = Secret(secrets.token_urlsafe(32))
        self.port: int | None = None
        self.startup_seconds: float | None = None

    def __repr__(self) -> str:
        return f"LocalRedisServer(address={self._host}:{self.port}, running={self.running})"

    @property
    def password(self) -> Secret:
        """The password clients log in with."""
        return self._password

    @property
    def endpoint(self) -> RedisEndpoint:
        """Where this server is, as a :class:`RedisEndpoint` (database 0)."""
        if self.port is None:
            raise LocalServerError("the local Redis server has not been started")
        return RedisEndpoint(host=self._host, port=self.port, password=self._password)

    @property
    def url(self) -> str:
        """``redis://:password@127.0.0.1:port/0``: for clients, never for logs."""
        return self.endpoint.url

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, for LiveKit's ``redis.address``."""
        return self.endpoint.address

    @property
    def workdir(self) -> Path:
        """The server's private directory."""
        if self._workdir is None:
            raise LocalServerError("the local Redis server has not been started")
        return self._workdir

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self._log_path or self.workdir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **options: Any) -> aioredis.Redis:
        """A new ``redis.asyncio`` client logged in to this server (the caller closes it)."""
        return self.endpoint.client(**options)

    async def start(self, attempts: int = 3) -> LocalRedisServer:
        """Start the server and wait until it answers PING.

        A port taken between choosing and binding is retried with a new one
        (unless the port is fixed).

        Raises:
            LocalServerError: It would not start; the message has its last log lines.
        """
        for attempt in range(attempts):
            try:
                await self._start_once()
                return self
            except LocalServerError as exc:
                await self._stop(grace=0.0)
                in_use = "address already in use" in exc.message.lower()
                if not in_use or self._fixed_port is not None or attempt == attempts - 1:
                    # A first start leaves nothing behind; a failed restart
                    # keeps the directory (and any data) for the owner's aclose.
                    if self.startup_seconds is None:
                        await self.aclose()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="softphone-redis-"))
        self._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An existing directory keeps its mode; a new one's is cut by the umask.
        os.chmod(self._workdir, 0o700)
        return self._workdir

    async def _start_once(self) -> None:
        workdir = self._prepare_workdir()
        self.port = self._fixed_port or free_port(host=self._host)
        config = workdir / _CONFIG_NAME
        # Small local files and a fork: quick, bounded calls.
        with open(config, "w", encoding="utf-8", opener=_private_opener) as f:  # noqa: ASYNC230
            f.write(
                _config(
                    self._host, self.port, workdir, self._password, persistence=self._persistence
                )
            )
        out = open(self.log_path, "ab", opener=_private_opener)  # noqa: SIM115, ASYNC230
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [str(self._binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise LocalServerError(f"could not run {self._binary}: {exc.strerror}") from exc
        finally:
            out.close()
        await self._wait_ready(started)
        self.startup_seconds = time.monotonic() - started
        log.info(
            "local Redis server ready",
            extra={"address": self.address, "ms": round(self.startup_seconds * 1000)},
        )

    async def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self._ready_timeout
        # No retries inside a ping: this loop is the retry, and it watches the process.
        client = self.client(
            socket_connect_timeout=1.0, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                if self._proc.poll() is not None:
                    raise LocalServerError(
                        f"redis-server exited with code {self._proc.returncode} at start:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(redis.exceptions.ConnectionError, TimeoutError):
                    # BusyLoadingError (reading its data back) is a ConnectionError too.
                    if await client.ping():
                        return
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"redis-server did not answer within {self._ready_timeout:.0f} s:\n"
                        + self.log_tail()
                    )
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, LocalServerError):
            return "(no log file)"
        return "\n".join(text.strip().splitlines()[-lines:])

    async def _stop(self, grace: float) -> None:
        """SIGTERM (a clean shutdown, no save), SIGKILL after ``grace`` s; 0: SIGKILL at once."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc, grace)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop the server and remove its directory if this object made it."""
        await self._stop(grace)
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def restart(self, *, kill: bool = True, down_s: float = 0.0) -> None:
        """Stop the server (SIGKILL, or a clean stop) and start it on the same port.

        The password and directory stay; the data stays only with ``persistence``.

        Args:
            kill: Kill it with SIGKILL (a crash) rather than SIGTERM.
            down_s: How long it stays down before starting again.
        """
        if self.port is None:
            raise LocalServerError("the local Redis server has not been started")
        self._fixed_port = self.port
        await self._stop(grace=0.0 if kill else 5.0)
        await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> LocalRedisServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def redis_from_env(
    env: Mapping[str, str] | None = None,
    *,
    workdir: Path | None = None,
    log_path: Path | None = None,
    persistence: bool = False,
) -> AsyncIterator[RedisEndpoint]:
    """The Redis ``REDIS_URL`` names, as-is; or else a local one for the block's length.

    Args:
        env: Environment to read (default ``os.environ``).
        workdir: Private directory of a local server (see :class:`LocalRedisServer`).
        log_path: Log file of a local server.
        persistence: Whether a local server keeps its data across restarts.

    Raises:
        ConfigError: ``REDIS_URL`` is set but is not a Redis URL.
        LocalServerError: No ``REDIS_URL`` and a local server would not start.
    """
    env = os.environ if env is None else env
    url = env.get(REDIS_URL_ENV, "").strip()
    if url:
        endpoint = RedisEndpoint.from_url(url)
        log.info("using the Redis named by REDIS_URL", extra={"address": endpoint.address})
        yield endpoint
        return
    async with LocalRedisServer(
        workdir=workdir, log_path=log_path, persistence=persistence
    ) as server:
        yield server.endpoint
