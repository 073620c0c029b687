"""A deployment of the backend for ``bench/scale.py``, run by a host process of its own.

A deployment is a LiveKit server, a Redis and N backend replicas of one
deployment on it (``tests/transfer/backend_process.py``: the same keys,
command-signing key and Redis prefix). It lives in a host process
(``python bench/_scale_deployment.py --host``) that holds no RTC client,
and the bench asks it to kill, restart and measure replicas.

Why a host: starting a replica forks with a ``preexec_fn`` (``subprocess``),
and a fork of a process whose RTC SDK threads are running can deadlock in
the child before it execs; the parent then waits on it for ever, inside a
synchronous call no timeout can interrupt (seen: a replica restarted between
failover runs hung the bench). The host forks only while it is alone.

Protocol (JSON lines): the bench writes one config line
``{"replicas", "lease_ttl_s", "lobby"}`` on the host's stdin, the host
answers ``{"ready": {...}}`` (URLs, the identities' API keys, the LiveKit
URL and credentials: secrets, carried by the pipe only); then each command
``{"op": "kill"|"restart"|"running"|"cpu"|"log_tail", "index": i}`` gets one
``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` line. The host
stops everything when its stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.config import Secret
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.infra.redis_server import LocalRedisServer
from softphone.infra.server_binary import ensure_server_binary
from tests.transfer.backend_process import BackendProcess

# Seconds the host may take to start a deployment (LiveKit, Redis, replicas).
START_TIMEOUT_S = 180.0
# Seconds a command may take (a restart waits for the replica's health).
COMMAND_TIMEOUT_S = 90.0
# The ready line carries every identity's key: well over asyncio's default line limit.
LINE_LIMIT = 2**22


# ---- in the host ---------------------------------------------------------------------------
@dataclasses.dataclass
class Deployment:
    """Running replicas of one backend on one Redis and one LiveKit server."""

    livekit: LocalLiveKitServer
    backends: list[BackendProcess]

    async def restart(self, index: int) -> None:
        """Start replica ``index`` again on its port (after a kill, or a crash)."""
        backend = self.backends[index]
        await backend.__aexit__(None, None, None)
        await backend.__aenter__()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each replica and its children, by URL."""
        return {b.url: process_tree_cpu_s(replica_pid(b.port)) for b in self.backends}


@contextlib.asynccontextmanager
async def deployment(
    replicas: int, *, lease_ttl_s: float | None, lobby: str
) -> AsyncIterator[Deployment]:
    """A fresh deployment of ``replicas`` replicas; everything stopped and removed at the end.

    Args:
        replicas: How many backend replicas.
        lease_ttl_s: ``SOFTPHONE_LEASE_TTL_S`` of the replicas (None: their default).
        lobby: The lobby room.
    """
    # Deployed as the README says: LiveKit's webhooks reach every replica,
    # which then polls rooms only as a slow safety net.
    env = {"SOFTPHONE_LIVEKIT_WEBHOOKS": "true"}
    if lease_ttl_s is not None:
        env["SOFTPHONE_LEASE_TTL_S"] = str(lease_ttl_s)
    ports = [free_port() for _ in range(replicas)]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        tmp = Path(name)  # 0700: the keys files and logs stay private
        livekit = LocalLiveKitServer(
            binary=ensure_server_binary(),
            log_path=tmp / "livekit.log",
            webhook_urls=[f"http://127.0.0.1:{p}/v1/livekit/webhook" for p in ports],
        )
        try:
            async with (
                livekit,
                LocalRedisServer(log_path=tmp / "redis.log") as redis,
                contextlib.AsyncExitStack() as stack,
            ):
                backends: list[BackendProcess] = []
                for i in range(replicas):
                    workdir = tmp / f"replica-{i + 1}"
                    workdir.mkdir(mode=0o700)
                    backends.append(
                        BackendProcess(
                            livekit_server=livekit,
                            workdir=workdir,
                            lobby=lobby,
                            offer_timeout_s=30.0,
                            redis_url=redis.url,
                            extra_env=env,
                            replica_of=backends[0] if backends else None,
                            port=ports[i],
                        )
                    )
                    await stack.enter_async_context(backends[-1])
                yield Deployment(livekit, backends)
        finally:  # after everything stopped: whole logs
            keep_logs(tmp)


def keep_logs(tmp: Path) -> None:
    """Copy the deployment's logs to ``$SOFTPHONE_BENCH_LOG_DIR/<time>/`` when that is set.

    For reading a slow run afterwards; the logs carry no secrets (the backend
    masks them) and the copies stay private (0700 directory, 0600 files).
    """
    where = os.environ.get("SOFTPHONE_BENCH_LOG_DIR")
    if not where:
        return
    dest = Path(where) / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    for log in tmp.rglob("*.log"):
        copy = dest / "-".join(log.relative_to(tmp).parts)
        copy.write_bytes(log.read_bytes())
        copy.chmod(0o600)


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, ... (man 5 proc)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def replica_pid(port: int) -> int:
    """The pid of this process's child ``python -m softphone.backend --port PORT``.

    Raises:
        LookupError: No such process runs.
    """
    me, want = os.getpid(), str(port).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int(_stat(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if ppid == me and b"softphone.backend" in args and b"--port" in args:
            i = args.index(b"--port")
            if i + 1 < len(args) and args[i + 1] == want:
                return int(entry.name)
    raise LookupError(f"no backend replica on port {port}")


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        # utime and stime are fields 14 and 15, in clock ticks.
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += children.get(p, [])
    return total


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _answer(dep: Deployment, cmd: dict[str, Any]) -> dict[str, Any]:
    op, index = cmd.get("op"), int(cmd.get("index", 0))
    if not 0 <= index < len(dep.backends):
        raise ValueError(f"no replica {index}")
    backend = dep.backends[index]
    if op == "kill":
        at = time.monotonic()  # one clock for every process of the machine
        backend.kill()
        return {"at": at}
    if op == "restart":
        await dep.restart(index)
        return {}
    if op == "running":
        return {"running": [b.running for b in dep.backends]}
    if op == "cpu":
        return {"cpu_s": dep.cpu_s()}
    if op == "log_tail":
        lines = backend.log_path.read_text(errors="replace").splitlines()
        return {"lines": lines[-int(cmd.get("lines", 20)) :]}
    raise ValueError(f"unknown command {op!r}")


async def host() -> None:
    """Host mode: start the deployment the config line asks for, then answer commands."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cfg = json.loads(await reader.readline())
    async with deployment(
        int(cfg["replicas"]), lease_ttl_s=cfg.get("lease_ttl_s"), lobby=str(cfg["lobby"])
    ) as dep:
        first = dep.backends[0]
        _say(
            {
                "ready": {
                    "urls": [b.url for b in dep.backends],
                    "keys": first.keys,
                    "livekit_url": dep.livekit.url,
                    "api_key": dep.livekit.api_key,
                    "api_secret": dep.livekit.api_secret.get(),
                }
            }
        )
        async for line in reader:
            try:
                _say({"ok": True, **await _answer(dep, json.loads(line))})
            except Exception as exc:  # the bench hears of it; the host carries on
                _say({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


# ---- in the bench ----------------------------------------------------------------------------
class HostedDeployment:
    """The bench's handle on a deployment run by a host process.

    Attributes:
        urls: The replicas' base URLs, replica 0 first.
        keys: API key of every identity the replicas know (``caller-N``, ...).
        livekit_url: The LiveKit server's URL.
        api_key: Its API key.
        api_secret: Its API secret.
    """

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self._proc = proc
        self._lock = asyncio.Lock()
        self.urls: list[str] = list(ready["urls"])
        self.keys: dict[str, str] = dict(ready["keys"])
        self.livekit_url: str = ready["livekit_url"]
        self.api_key: str = ready["api_key"]
        self.api_secret = Secret(ready["api_secret"])

    async def _ask(self, op: str, index: int = 0, **extra: Any) -> dict[str, Any]:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        async with self._lock:
            stdin.write((json.dumps({"op": op, "index": index, **extra}) + "\n").encode())
            await stdin.drain()
            line = await asyncio.wait_for(stdout.readline(), COMMAND_TIMEOUT_S)
        if not line:
            raise RuntimeError("the deployment's host process is gone")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"the deployment's host could not {op}: {answer.get('error')}")
        return answer

    async def kill(self, index: int) -> float:
        """SIGKILL replica ``index`` (a crash); the ``time.monotonic()`` of the kill."""
        return float((await self._ask("kill", index))["at"])

    async def restart(self, index: int) -> None:
        """Start replica ``index`` again on its port; returns once it answers."""
        await self._ask("restart", index)

    async def running(self) -> list[bool]:
        """Whether each replica's process is alive."""
        return list((await self._ask("running"))["running"])

    async def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each replica (and its children), by URL."""
        return dict((await self._ask("cpu"))["cpu_s"])

    async def log_tail(self, index: int, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of replica ``index``'s log (the backend masks secrets)."""
        return list((await self._ask("log_tail", index, lines=lines))["lines"])


@contextlib.asynccontextmanager
async def hosted_deployment(
    replicas: int, *, lease_ttl_s: float | None, lobby: str
) -> AsyncIterator[HostedDeployment]:
    """A fresh deployment in a host process; stopped (and the host gone) at the end.

    Args:
        replicas: How many backend replicas.
        lease_ttl_s: ``SOFTPHONE_LEASE_TTL_S`` of the replicas (None: their default).
        lobby: The lobby room.

    Raises:
        RuntimeError: The deployment did not start (the host's stderr says why).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--host",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        cfg = {"replicas": replicas, "lease_ttl_s": lease_ttl_s, "lobby": lobby}
        proc.stdin.write((json.dumps(cfg) + "\n").encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        if not line:
            raise RuntimeError("the deployment did not start (its host's stderr says why)")
        yield HostedDeployment(proc, json.loads(line)["ready"])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the host stops the deployment and exits
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            await proc.wait()


if __name__ == "__main__":
    if sys.argv[1:] != ["--host"]:
        sys.exit("this module is bench/scale.py's deployment host: run bench/scale.py")
    asyncio.run(host())
