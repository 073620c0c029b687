"""Finding, or building, the pinned ``livekit-server`` binary.

Search order: an explicit path (setting ``livekit_server_bin`` or
``SOFTPHONE_LIVEKIT_SERVER``), then ``livekit-server`` on ``PATH`` if it is the
pinned version, then the per-user cache, and last a build from the Go module
registry into that cache (``go install ...@v<version>``), which takes a couple
of minutes once.

The build is checksummed: the module's ``h1:`` hash is pinned here and checked
before the build, and Go verifies every download (the server and its
dependencies, against the module's ``go.sum`` and the public checksum
database); settings that would turn that verification off are removed from
the build's environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from softphone.config import cache_home
from softphone.errors import LocalServerError

LIVEKIT_SERVER_VERSION = "1.13.5"
LIVEKIT_SERVER_MODULE = "github.com/livekit/livekit-server/cmd/server"
# `go mod download -json github.com/livekit/livekit-server@v1.13.5` -> "Sum";
# the same hash sum.golang.org records for this version.
LIVEKIT_SERVER_MODULE_SUM = "h1:HWfxfKvi5k1czMVqLV/htGmPgEBhrqHMxpfyMvfhyVo="
# Environment that would let Go skip checksum verification of downloads.
_UNVERIFIED_GO_ENV = ("GONOSUMDB", "GONOSUMCHECK", "GOPRIVATE", "GOINSECURE")
BINARY_NAME = "livekit-server"

log = logging.getLogger(__name__)


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache directory holding built servers, one folder per version."""
    return cache_home(env) / "livekit-server" / f"v{LIVEKIT_SERVER_VERSION}"


def binary_version(path: Path) -> str | None:
    """Return the version a livekit-server binary reports, or None if it does not run."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.strip().split()
    return words[-1] if out.returncode == 0 and words else None


def find_server_binary(explicit: str = "", env: Mapping[str, str] | None = None) -> Path | None:
    """Find the pinned livekit-server without building it.

    Args:
        explicit: A path that must be used if given (from settings).
        env: Environment to read (``SOFTPHONE_LIVEKIT_SERVER``, ``PATH``, cache dirs).

    Returns:
        The binary's path, or None when no usable binary is present.

    Raises:
        LocalServerError: An explicitly named binary does not exist or does not run.
    """
    env = os.environ if env is None else env
    explicit = explicit or env.get("SOFTPHONE_LIVEKIT_SERVER", "")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file() or binary_version(path) is None:
            raise LocalServerError(f"livekit-server at {path} does not exist or does not run")
        return path
    on_path = shutil.which(BINARY_NAME, path=env.get("PATH"))
    if on_path:
        version = binary_version(Path(on_path))
        if version == LIVEKIT_SERVER_VERSION:
            return Path(on_path)
        log.info(
            "livekit-server on PATH is not the pinned version; using the cache",
            extra={"found_version": version, "pinned": LIVEKIT_SERVER_VERSION},
        )
    cached = cache_dir(env) / BINARY_NAME
    if cached.is_file() and binary_version(cached) == LIVEKIT_SERVER_VERSION:
        return cached
    return None


def verified_go_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with every setting removed that would skip Go's checksum checks.

    Go then verifies each module it downloads against ``go.sum`` and the
    checksum database (``GOSUMDB``, default ``sum.golang.org``), and
    ``-mod=readonly`` keeps it from rewriting any ``go.sum``.
    """
    clean = {k: v for k, v in env.items() if k not in _UNVERIFIED_GO_ENV}
    if clean.get("GOSUMDB", "").strip() == "off":
        del clean["GOSUMDB"]
    flags = [
        f for f in clean.get("GOFLAGS", "").split() if not f.startswith(("-insecure", "-mod="))
    ]
    clean["GOFLAGS"] = " ".join([*flags, "-mod=readonly"])
    return clean


def check_module_sum(go: str, env: Mapping[str, str]) -> None:
    """Download the pinned server module and compare its hash with the pinned one.

    Raises:
        LocalServerError: The download failed or the module is not the pinned one.
    """
    module = LIVEKIT_SERVER_MODULE.removesuffix("/cmd/server")
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@v{LIVEKIT_SERVER_VERSION}"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        found = json.loads(proc.stdout).get("Sum", "")
    except ValueError:
        found = ""
    if proc.returncode != 0 or found != LIVEKIT_SERVER_MODULE_SUM:
        raise LocalServerError(
            f"livekit-server {LIVEKIT_SERVER_VERSION} module checksum is {found or 'unknown'}, "
            f"expected {LIVEKIT_SERVER_MODULE_SUM}; not building it:\n"
            + (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        )


def build_server_binary(env: Mapping[str, str] | None = None) -> Path:
    """Build the pinned livekit-server from the Go module registry into the cache.

    The build goes to a temporary directory first and is moved in place only
    when complete, so an interrupted build never leaves a broken binary.

    Raises:
        LocalServerError: Go is missing or the build failed; the message says
            what to install or where to look.
    """
    env = verified_go_env(os.environ if env is None else env)
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise LocalServerError(
            f"livekit-server {LIVEKIT_SERVER_VERSION} is not on PATH or in {cache_dir(env)}, "
            "and Go is not installed to build it. Install Go (1.23 or newer), or put "
            f"livekit-server {LIVEKIT_SERVER_VERSION} on PATH, or set SOFTPHONE_LIVEKIT_SERVER."
        )
    check_module_sum(go, env)
    target = cache_dir(env)
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        env["GOBIN"] = tmp
        env.setdefault("CGO_ENABLED", "0")
        log.info(
            "building livekit-server %s with Go; this takes a few minutes once",
            LIVEKIT_SERVER_VERSION,
        )
        proc = subprocess.run(
            [go, "install", f"{LIVEKIT_SERVER_MODULE}@v{LIVEKIT_SERVER_VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        built = Path(tmp) / "server"
        if proc.returncode != 0 or not built.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise LocalServerError(
                f"building livekit-server {LIVEKIT_SERVER_VERSION} with Go failed "
                f"(exit {proc.returncode}):\n{tail}"
            )
        final = target / BINARY_NAME
        os.replace(built, final)
    log.info("built livekit-server", extra={"seconds": round(time.monotonic() - started, 1)})
    return final


def ensure_server_binary(explicit: str = "", env: Mapping[str, str] | None = None) -> Path:
    """Find the pinned livekit-server, building it into the cache if needed.

    Raises:
        LocalServerError: No binary could be found or built.
    """
    return find_server_binary(explicit, env) or build_server_binary(env)


def main() -> None:
    """Command line: print the path of the server binary, building it if needed."""
    print(ensure_server_binary())


if __name__ == "__main__":
    main()
