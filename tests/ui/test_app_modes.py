"""The command line's app modes: headless join and clean exit, clear errors for bad use."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from softphone.app import LiveKitAccess, open_context
from softphone.config import Settings

pytestmark = pytest.mark.ui


def _env(home: Path, pulse: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "SOFTPHONE_HOME": str(home), "SOFTPHONE_LIVE_TRANSCRIPT": "0"}
    env["XDG_RUNTIME_DIR"] = pulse["XDG_RUNTIME_DIR"]
    for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        env.pop(var, None)
    return env


def test_headless_joins_with_the_microphone_and_stops_cleanly_on_sigterm(
    tmp_path: Path, pulse_audio: dict[str, str]
) -> None:
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "softphone", "--headless", "--role", "caller"],
            env=_env(tmp_path, pulse_audio),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        # No --room: the caller placed a call; the service named its room.
        assert re.match(r"joined call-[0-9a-f]{32} as caller-default ", line), errors.read_text()[
            -3000:
        ]
        assert "microphone: none" not in line, "the PulseAudio microphone should be used"
        server_pids = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-f", "livekit-server"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert server_pids, "headless mode runs its own embedded server"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        for pid in server_pids:
            assert not Path(f"/proc/{pid}").exists(), "the embedded server outlived the app"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--headless"], "--headless needs --room"),
        (["--theme", "purple"], "invalid choice"),
        (["--headless", "--room", "bad room!"], "room:"),
    ],
)
def test_bad_use_of_app_modes_is_a_clear_error(
    tmp_path: Path, pulse_audio: dict[str, str], args: list[str], needle: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "softphone", *args],
        env=_env(tmp_path, pulse_audio),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_opening_the_app_repairs_recordings_cut_by_a_crash(
    ui_settings: Callable[..., Settings],
    access: LiveKitAccess,
    run_ui: Callable[..., Any],
) -> None:
    settings = ui_settings("crashed", role="agent", identity="agent-c")
    folder = settings.recordings_path / "call-1"
    folder.mkdir(parents=True)
    cut = folder / "call-caller.wav"
    with wave.open(str(cut), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\x01\x00" * 4800)
    with cut.open("ab") as f:  # audio written after the last header update
        f.write(b"\x02\x00" * 48000)

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await open_context(settings, access, stack)

    run_ui(scenario(), 60)
    with wave.open(str(cut), "rb") as w:
        assert w.getnframes() == 4800 + 48000
