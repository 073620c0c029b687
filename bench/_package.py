"""The packaged desktop app (build.spec): building it, and how fast it starts.

- :func:`build_package` runs PyInstaller on ``build.spec`` into a directory
  of the caller's (nothing is written into the source tree) and returns the
  built program.
- :func:`package_startup_ms` measures ``package_startup_ms`` for
  ``bench/app.py`` the way that script measures ``startup_ms``: from
  launching ``softphone --role agent`` (a new process that starts its own
  LiveKit server) to its window being shown and usable (the app's
  "window ready" line), offscreen, live transcript off.

The test suite (``tests/test_package.py``) builds with :func:`build_package`
too, so the benchmark and the check measure the same thing.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "build.spec"
APP_NAME = "softphone"  # the spec's COLLECT name and program name
BUILD_TIMEOUT_S = 1200.0  # 2.5 to 3 minutes on a busy 2-core machine
READY_LINE = "window ready"
# Variables of the caller's environment that would point the app elsewhere.
_FOREIGN_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


class PackageError(RuntimeError):
    """The app could not be built, or the built app did not start."""


def build_package(out_dir: Path) -> Path:
    """Build the desktop app with PyInstaller into ``out_dir``; return the program.

    ``out_dir/dist/softphone/`` holds the app (the program and its
    ``_internal/`` folder), ``out_dir/work/`` PyInstaller's intermediate files
    and ``out_dir/build.log`` its output.

    Raises:
        PackageError: PyInstaller failed or produced no program.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "build.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "PyInstaller",
                str(SPEC),
                "--noconfirm",
                "--log-level=WARN",
                "--distpath",
                str(out_dir / "dist"),
                "--workpath",
                str(out_dir / "work"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    binary = out_dir / "dist" / APP_NAME / APP_NAME
    if proc.returncode != 0 or not binary.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise PackageError(f"pyinstaller failed (exit {proc.returncode}):\n{tail}")
    return binary


def package_size_mb(binary: Path) -> float:
    """Size of the app folder ``binary`` lives in, in MB (links inside it counted once)."""
    total = 0
    for folder, _dirs, files in os.walk(binary.parent):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if not stat.S_ISLNK(st.st_mode):
                total += st.st_size
    return total / 1e6


def package_startup_ms(
    binary: Path, *, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
) -> float:
    """Milliseconds from launching the built app to its window being usable.

    Args:
        binary: The built program (:func:`build_package`).
        env: The environment to start it in (default ``os.environ``), e.g. one
            with a private PulseAudio's ``XDG_RUNTIME_DIR``. Its LiveKit
            settings are removed: the app starts its own server, as
            ``startup_ms`` measures it.
        timeout_s: How long the window may take.

    Raises:
        PackageError: The app exited or showed no window in time.
    """
    with tempfile.TemporaryDirectory(prefix="softphone-package-startup-") as home:
        run_env = dict(os.environ if env is None else env)
        for var in _FOREIGN_ENV:
            run_env.pop(var, None)
        run_env.update(
            SOFTPHONE_HOME=home,
            SOFTPHONE_LIVE_TRANSCRIPT="0",
            QT_QPA_PLATFORM="offscreen",
        )
        launched = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "--role", "agent", "--profile", "bench-package"],
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # A hung app never writes the line: the timer ends it, and the read ends.
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if READY_LINE in line:
                    ready = time.monotonic() - launched
                    # Keep draining stderr so the app never blocks on a full pipe.
                    threading.Thread(target=proc.stderr.read, daemon=True).start()
                    return ready * 1000
            raise PackageError(f"the packaged app exited ({proc.wait()}) with no window")
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.terminate()  # the app closes its window and its server
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main() -> None:
    """``python bench/_package.py [PROGRAM]``: size and startup of a built app.

    With no program, the app is built first, into a temporary directory.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("program", nargs="?", type=Path, help="a built app (default: build one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="softphone-package-") as tmp:
        binary = args.program
        if binary is None:
            started = time.monotonic()
            binary = build_package(Path(tmp))
            print(f"build_s {time.monotonic() - started:.0f}")
        print(f"package_size_mb {package_size_mb(binary):.0f}")
        print(f"package_startup_ms {package_startup_ms(binary):.0f}")


if __name__ == "__main__":
    main()
