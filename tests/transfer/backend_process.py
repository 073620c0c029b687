"""The real backend as a child process under uvicorn, for tests and the benchmark."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from softphone.client.remote_service import RemoteTransferService
from softphone.config import Secret
from softphone.infra.local_server import LocalLiveKitServer, _die_with_parent, free_port

IDENTITIES = 400
# Supervisors (supervisor-N) and integrators such as the phone gateway (gateway-N).
STAFF = 20


def identities() -> list[tuple[str, str]]:
    """(identity, role) pairs the backend has keys for."""
    out: list[tuple[str, str]] = []
    for n in range(IDENTITIES):
        out += [(f"caller-{n}", "caller"), (f"agent-a-{n}", "agent"), (f"agent-b-{n}", "agent")]
    for n in range(STAFF):
        out += [(f"supervisor-{n}", "supervisor"), (f"gateway-{n}", "service")]
    return out


class BackendProcess:
    """``python -m softphone.backend`` on a free loopback port, with a keys file.

    Args:
        livekit_server: The LiveKit server the backend administers.
        workdir: Where the keys file, profile and log go.
        lobby: The lobby room.
        offer_timeout_s: Offer timeout.
        extra_args: More command-line flags.
        extra_env: More environment.
        redis_url: The Redis of the live state (default: the backend starts a
            private one).
        replica_of: Another replica of the same deployment: the same keys,
            command-signing key and Redis key prefix.
        port: Its port (default: a free one).
    """

    def __init__(
        self,
        *,
        livekit_server: LocalLiveKitServer,
        workdir: Path,
        lobby: str,
        offer_timeout_s: float,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
        redis_url: str | None = None,
        replica_of: BackendProcess | None = None,
        port: int | None = None,
    ) -> None:
        self._lk = livekit_server
        self.redis_url = redis_url
        # One deployment: replicas share keys, the command-signing key and the state's keys.
        self.signing_key: str = (
            replica_of.signing_key
            if replica_of
            else base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        )
        self.redis_prefix: str = (
            replica_of.redis_prefix if replica_of else f"sp-{secrets.token_hex(4)}:"
        )
        self._dir = workdir
        self.lobby = lobby
        self._offer_timeout_s = offer_timeout_s
        self._extra_args = extra_args
        self._extra_env = dict(extra_env or {})
        self.keys: dict[str, str] = (
            dict(replica_of.keys)
            if replica_of
            else {ident: secrets.token_urlsafe(24) for ident, _ in identities()}
        )
        self.roles = dict(identities())
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "backend.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def client_for(self, identity: str) -> RemoteTransferService:
        """A remote service acting as ``identity`` (with its own key)."""
        return RemoteTransferService(base_url=self.url, api_key=Secret(self.keys[identity]))

    async def __aenter__(self) -> BackendProcess:
        keys_file = self._dir / "keys.json"
        keys_file.write_text(
            json.dumps(
                {"keys": {k: {"identity": i, "role": self.roles[i]} for i, k in self.keys.items()}}
            )
        )
        keys_file.chmod(0o600)
        env = {
            **os.environ,
            "LIVEKIT_URL": self._lk.url,
            "LIVEKIT_API_KEY": self._lk.api_key,
            "LIVEKIT_API_SECRET": self._lk.api_secret.get(),
            "SOFTPHONE_HOME": str(self._dir / "home"),
            "SOFTPHONE_COMMAND_SIGNING_KEY": self.signing_key,
            "SOFTPHONE_REDIS_PREFIX": self.redis_prefix,
            **({"REDIS_URL": self.redis_url} if self.redis_url else {}),
            **self._extra_env,
        }
        args = [
            sys.executable,
            "-m",
            "softphone.backend",
            "--port",
            str(self.port),
            "--keys-file",
            str(keys_file),
            "--lobby",
            self.lobby,
            "--offer-timeout",
            str(self._offer_timeout_s),
            "--move-timeout",
            "8",
            *self._extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError("backend exited:\n" + self.log_path.read_text()[-2000:])
                try:
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("backend did not start:\n" + self.log_path.read_text())
                await asyncio.sleep(0.1)
        return self

    @property
    def pid(self) -> int | None:
        """The backend's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the backend process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """Kill the backend at once with SIGKILL: a crash, no shutdown code runs."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
