"""UI test fixtures: PulseAudio null devices, a qasync loop per test, the LiveKit server.

How qasync, pytest-qt and pytest-asyncio coexist here: pytest-asyncio runs
async tests and fixtures on one session-scoped asyncio loop, which is not
running while a sync test runs. UI tests are therefore plain sync tests that
use pytest-qt's ``qapp``/``qtbot`` and hand their scenario coroutine to
:func:`run_ui`, which runs it to completion on a fresh qasync loop driving
Qt (and restores the previous event loop after). The async session fixture
``livekit_server`` is still usable from these sync tests: pytest-asyncio sets
it up on its own loop, and the tests only take its URL and keys (the server is
a child process; any loop may talk to it).

Audio devices: a session fixture starts a private PulseAudio (``-n``, no
default modules) with a null sink and a virtual source remapped from the
sink's monitor, so PortAudio (through ALSA's pulse plugin) has real devices
even as root in CI. What is played into the sink is what the microphone
captures; :func:`play_tone` plays a sine into it with ``pacat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication

from softphone.app import LiveKitAccess
from softphone.config import Settings, load_settings
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.devices import rescan
from softphone.media.session import RtcSession, settle_abandoned
from softphone.server.token_minter import TokenMinter
from softphone.ui.shell import QtLoop
from softphone.ui.theme import apply_theme
from tests.audio_probe import Listener

# Offscreen unless told otherwise: CI has no display (screenshots use Xvfb).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SINK = "softphone_test_out"
SOURCE = "softphone_test_mic"


@pytest.fixture(scope="session")
def pulse_audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio with a null sink and a virtual microphone; stopped after."""
    runtime = tmp_path_factory.mktemp("pulse-runtime")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    env.pop("PULSE_SERVER", None)
    binary = shutil.which("pulseaudio")
    assert binary, "pulseaudio is missing: ./dev setup installs it"
    subprocess.run(
        [
            binary,
            "-D",
            "-n",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--log-target=stderr",
            "-L",
            "module-native-protocol-unix",
            "-L",
            f"module-null-sink sink_name={SINK} sink_properties=device.description=Test-Headset",
            "-L",
            f"module-remap-source source_name={SOURCE} master={SINK}.monitor "
            "source_properties=device.description=Test-Mic",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    deadline = time.monotonic() + 10
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "pulseaudio did not come up"
        time.sleep(0.1)
    subprocess.run(["pactl", "set-default-sink", SINK], env=env, check=True)
    subprocess.run(["pactl", "set-default-source", SOURCE], env=env, check=True)
    rescan()  # PortAudio may have been initialised before the server existed
    yield env
    subprocess.run([binary, "--kill"], env=env, capture_output=True, timeout=30)
    if previous is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = previous


class Tone:
    """A sine played into the test sink (so every microphone captures it) until stopped."""

    def __init__(self, env: dict[str, str], freq: float, seconds: float) -> None:
        t = np.arange(int(48000 * seconds)) / 48000
        pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16).tobytes()
        self.proc = subprocess.Popen(
            [
                "pacat",
                "--playback",
                "--raw",
                "--format=s16le",
                "--rate=48000",
                "--channels=1",
                f"--device={SINK}",
                "--latency-msec=50",
            ],
            stdin=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None
        self._stdin = self.proc.stdin
        self._pcm = pcm

    async def start(self) -> None:
        """Feed the tone in a thread (pacat plays it in real time)."""
        await asyncio.to_thread(self._write)

    def _write(self) -> None:
        try:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.write(self._pcm)
        finally:
            # Stopped early, the pipe is broken; the file is closed all the same.
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()

    def stop(self) -> None:
        """Stop playing."""
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def play_tone(pulse_audio: dict[str, str]) -> Iterator[Callable[[float, float], Tone]]:
    """Start a tone in the test sink; every tone is stopped after the test."""
    tones: list[Tone] = []

    def play(freq: float, seconds: float) -> Tone:
        tone = Tone(pulse_audio, freq, seconds)
        tones.append(tone)
        return tone

    yield play
    for t in tones:
        t.stop()


@pytest.fixture
def access(livekit_server: LocalLiveKitServer) -> LiveKitAccess:
    """The session's LiveKit server, as the app sees a server."""
    return LiveKitAccess(
        url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    )


@pytest.fixture
def ui_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings of a fresh profile in a per-test home (no machine environment)."""

    def make(profile: str, **values: Any) -> Settings:
        # Tone levels are what these tests judge: no gain control or noise
        # suppression reshaping them, and no echo cancellation either. Every
        # app here plays into the one test sink whose monitor is every
        # microphone, so an agent's speaker (the caller's tone) is in its own
        # microphone with the same tone: the canceller rightly takes it out,
        # more or less as it converges. tests/media checks all four, on, with
        # a laptop's separate speaker and microphone.
        base: dict[str, Any] = {
            "profile": profile,
            "home": tmp_path,
            "live_transcript": False,
            "auto_gain": False,
            "noise_suppression": False,
            "echo_cancellation": False,
        }
        return load_settings({**base, **values}, env={})

    return make


@pytest.fixture
def run_ui(
    qapp: QApplication, pulse_audio: dict[str, str]
) -> Callable[[Coroutine[Any, Any, Any], float], Any]:
    """Run a UI scenario to completion on a qasync loop (see the module docstring)."""
    apply_theme(qapp, "light")
    # Closing the last window must not quit Qt (and with it stop the loop).
    qapp.setQuitOnLastWindowClosed(False)

    def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        policy = asyncio.get_event_loop_policy()
        previous = getattr(getattr(policy, "_local", None), "_loop", None)
        loop = QtLoop(qapp)
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout_s))
        finally:
            # A join still running when the loop stops would make the SDK panic.
            loop.run_until_complete(settle_abandoned())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(previous)

    return run


async def probe_listener(
    stack: contextlib.AsyncExitStack,
    access: LiveKitAccess,
    minter: TokenMinter,
    room: str,
    identity: str,
    *,
    hears: str,
) -> Listener:
    """A probe participant in ``room`` capturing what ``hears`` sends (closed with ``stack``)."""
    probe = RtcSession(
        url=access.url, token=minter.mint(role="agent", identity=identity, room=room).token
    )
    await probe.connect()
    stack.push_async_callback(probe.aclose)
    listener = Listener(await probe.wait_for_audio(hears))
    stack.push_async_callback(listener.aclose)
    return listener


async def wait_until(
    cond: Callable[[], object], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``cond`` on the loop (Qt keeps running) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def settle(seconds: float) -> None:
    """Let audio flow for a while."""
    await asyncio.sleep(seconds)


async def close_windows(*windows: Any) -> None:
    """Close windows the way the app does: close, then await their resources."""
    from softphone.ui.shell import close_window_resources

    for w in windows:
        w.close()
    for w in windows:
        await close_window_resources(w)


async def place_call(context: Any, *, caller: str, agent: str, windows: Sequence[Any] = ()) -> str:
    """Place a call through the service (as the caller's "call" button does).

    Returns the call's room (the registry names it) and types it into each
    window's room field, ready for its Join button.
    """
    ticket = await context.service().create_call(caller=caller, agent=agent, requester=caller)
    for w in windows:
        w.call_panel.room_edit.setText(ticket.call.room)
    return str(ticket.call.room)
