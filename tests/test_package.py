"""The packaged desktop app (build.spec) runs: it starts, calls, hears, and transcribes.

The app is built once per session with PyInstaller into a temporary
directory (``bench._package.build_package``, a few minutes), or taken from
``SOFTPHONE_PACKAGED_APP`` when that names a built program (``./dev package``
builds into ``dist/`` and runs this module against it). Then the built
program itself, not this interpreter, is run:

- ``--version`` and ``--help``;
- headless, as a caller placing a call against the session's LiveKit server:
  a real participant in the call plays a tone, and the tone comes out of the
  app's speaker (a PulseAudio null sink, recorded from its monitor); speech
  played into the app's microphone reaches that participant;
- the demo's windows under Xvfb (``xvfb-run -a``), with an empty user cache
  (so its LiveKit server is the bundled one) and speech played into the
  microphones: Agent A's live transcript loads the bundled Whisper model
  and stores a segment, and nothing in the app's output or log says an
  import or a library failed.

The audio devices are a private PulseAudio of this module (its own runtime
directory, passed to the app in its environment only): a null sink is the
speaker; a second null sink is the room, and its monitor is the microphone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from bench._package import BUILD_TIMEOUT_S, build_package
from softphone import __version__
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener, tone_level
from tests.speech.corpus import render_turn

# The first test to need the app waits for the build (pyproject's 300 s is per test).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT_S + 300)]

PACKAGE_ENV = "SOFTPHONE_PACKAGED_APP"
SPEAKER = "package_speaker"  # the app's speaker
ROOM = "package_room"  # what is played here, the app's microphone captures
MIC = "package_mic"
HEARD_HZ = 440.0  # played by the far end, to be heard from the app's speaker
HEARD = 0.5  # share of 10 ms windows carrying the tone
LOUD_RMS = 0.01  # -40 dBFS: what is played into the null devices is far louder than this
SPEECH_HEARD_WINDOWS = 50  # half a second of speech received
SPEECH = "Hello, I am calling about my invoice. I was charged twice for my last order."
# What would say the bundle misses a module or a native library.
BUNDLE_FAILURES = re.compile(
    r"ImportError|ModuleNotFoundError|No module named|failed to load|cannot open shared object"
)
# Settings from the machine's environment that would point the app elsewhere.
FOREIGN_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "QT_QPA_PLATFORM")


@pytest.fixture(scope="session")
def packaged_app() -> Iterator[Path]:
    """The built program: ``SOFTPHONE_PACKAGED_APP``, else built now (once per session).

    A build of its own is removed after the session (it is most of a GB).
    """
    given = os.environ.get(PACKAGE_ENV)
    if given:
        path = Path(given).resolve()
        assert path.is_file() and os.access(path, os.X_OK), f"{PACKAGE_ENV}={given} is no program"
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="softphone-package-test-") as out:
        yield build_package(Path(out))


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio with a speaker, a room and a microphone; its environment."""
    runtime = tmp_path_factory.mktemp("package-pulse")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    env.pop("PULSE_SERVER", None)
    subprocess.run(
        [
            "pulseaudio",
            "-D",
            "-n",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "-L",
            "module-native-protocol-unix",
            "-L",
            f"module-null-sink sink_name={SPEAKER}",
            "-L",
            f"module-null-sink sink_name={ROOM}",
            "-L",
            f"module-remap-source source_name={MIC} master={ROOM}.monitor",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "pulseaudio did not come up"
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-sink", SPEAKER], env=env, check=True)
        subprocess.run(["pactl", "set-default-source", MIC], env=env, check=True)
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)


def app_env(devices: dict[str, str], home: Path) -> dict[str, str]:
    """The app's environment: the private devices, its own home, the real HOME (caches)."""
    env = {k: v for k, v in devices.items() if k not in FOREIGN_ENV}
    env.update(HOME=os.environ.get("HOME", str(home)), SOFTPHONE_HOME=str(home))
    return env


@contextlib.contextmanager
def playing(devices: dict[str, str], pcm: np.ndarray) -> Iterator[None]:
    """Play 16-bit mono 48 kHz ``pcm`` into the room (the app's microphone) until left."""
    proc = subprocess.Popen(
        [
            "pacat",
            "--playback",
            "--raw",
            "--format=s16le",
            f"--rate={SAMPLE_RATE}",
            "--channels=1",
            f"--device={ROOM}",
        ],
        stdin=subprocess.PIPE,
        env=devices,
    )
    # pacat reads only as fast as it plays: write from a thread, never block the test.
    writer = threading.Thread(target=_write_all, args=(proc, pcm.tobytes()), daemon=True)
    writer.start()
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        writer.join(timeout=10)


def _write_all(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ValueError):
        proc.stdin.write(data)
    with contextlib.suppress(BrokenPipeError, ValueError):
        proc.stdin.close()


async def speaker_share(devices: dict[str, str], freq: float, seconds: float) -> float:
    """Share of 10 ms windows carrying ``freq`` in ``seconds`` of what the speaker plays."""
    proc = await asyncio.create_subprocess_exec(
        "parec",
        "--raw",
        "--format=s16le",
        f"--rate={SAMPLE_RATE}",
        "--channels=1",
        f"--device={SPEAKER}.monitor",
        stdout=subprocess.PIPE,
        env=devices,
    )
    await asyncio.sleep(seconds)
    proc.terminate()
    raw, _ = await proc.communicate()
    x = np.frombuffer(raw[: len(raw) // 2 * 2], np.int16).astype(np.float64) / 32768.0
    n = SAMPLE_RATE // 100
    windows = [x[i : i + n] for i in range(0, len(x) - n + 1, n)]
    return float(np.mean([tone_level(w, freq) > 0.05 for w in windows])) if windows else 0.0


def loud_windows(listener: Listener) -> list[float]:
    """Arrival times of the 10 ms windows received louder than -40 dBFS (RMS)."""
    return [t for t, w in listener.capture.windows() if np.sqrt(np.mean(w**2)) > LOUD_RMS]


@contextlib.asynccontextmanager
async def tone_participant(
    server: LocalLiveKitServer, minter: TokenMinter, room: str, identity: str
) -> AsyncIterator[RtcSession]:
    """A real participant in ``room`` publishing a tone at ``HEARD_HZ``."""
    session = RtcSession(
        url=server.url, token=minter.mint(role="agent", identity=identity, room=room).token
    )
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    player = TonePlayer(source, freq=HEARD_HZ)
    async with session:
        player.start()
        try:
            await session.publish_audio(source)
            yield session
        finally:
            await player.aclose()


def test_version_and_help(packaged_app: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SOFTPHONE_HOME": str(tmp_path)}
    out = subprocess.run(
        [str(packaged_app), "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"softphone {__version__}"
    out = subprocess.run(
        [str(packaged_app), "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for word in ("--headless", "--role", "--room", "demo"):
        assert word in out.stdout


async def test_headless_caller_hears_the_far_end_and_is_heard(
    packaged_app: Path,
    devices: dict[str, str],
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    tmp_path: Path,
) -> None:
    agent = "agent-package"
    env = app_env(devices, tmp_path)
    # The app holds the key: it is its own transfer service and places the call.
    env.update(LIVEKIT_API_KEY=livekit_server.api_key)
    env["LIVEKIT_API_SECRET"] = livekit_server.api_secret.get()
    stderr = (tmp_path / "app.stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(packaged_app),
        "--headless",
        "--role",
        "caller",
        "--identity",
        "caller-package",
        "--call-agent",
        agent,
        "--url",
        livekit_server.url,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 180)).decode()
        joined = re.match(r"joined (\S+) as caller-package \(microphone: (.+)\)", line)
        assert joined, f"no join: {line!r} {(tmp_path / 'app.stderr').read_text()[-3000:]}"
        assert joined.group(2) != "none"  # it opened the microphone device
        async with tone_participant(livekit_server, minter, joined.group(1), agent) as far:
            listener = Listener(await far.wait_for_audio("caller-package", timeout_s=60))
            try:
                # The far end's tone comes out of the app's speaker ...
                share = 0.0
                deadline = time.monotonic() + 60
                while share <= HEARD and time.monotonic() < deadline:
                    share = await speaker_share(devices, HEARD_HZ, 2.0)
                assert share > HEARD
                # ... and speech into the app's microphone reaches the far end
                # (speech: the microphone's noise suppression takes out a steady tone).
                heard_before = len(loud_windows(listener))
                with playing(devices, np.tile(render_turn(SPEECH, "en-us"), 4)):
                    deadline = time.monotonic() + 60
                    while len(loud_windows(listener)) - heard_before < SPEECH_HEARD_WINDOWS:
                        assert time.monotonic() < deadline, "the far end hears no speech"
                        await asyncio.sleep(0.2)
            finally:
                await listener.aclose()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
    output = (tmp_path / "app.stderr").read_text(errors="replace")
    assert not BUNDLE_FAILURES.search(output), output[-3000:]


def _segments(history: Path) -> list[tuple[str, str]]:
    """Transcript segments stored in a profile's history (read-only, while the app runs)."""
    if not history.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{history}?mode=ro", uri=True)) as db:
            return [(str(s), str(t)) for s, t in db.execute("SELECT speaker, text FROM segments")]
    except sqlite3.Error:  # not created yet
        return []


def _child(parent: int, program: Path) -> int | None:
    """The process id of ``parent``'s child running ``program``, if any."""
    children = subprocess.run(
        ["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in children:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/exe").resolve() == program.resolve():
                return int(pid)
    return None


def test_demo_under_xvfb_transcribes_with_the_bundled_model(
    packaged_app: Path, devices: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = app_env(devices, home)
    env["SOFTPHONE_LIVE_TRANSCRIPT"] = "1"
    # An empty cache: the demo's LiveKit server can only be the bundled one.
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.pop("SOFTPHONE_LIVEKIT_SERVER", None)
    output = tmp_path / "demo.out"
    speech = render_turn(SPEECH, "en-us")
    with output.open("wb") as out:
        launcher = subprocess.Popen(
            ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", str(packaged_app), "demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # xvfb-run, Xvfb and the app: one group, ours to end
        )
    try:
        deadline = time.monotonic() + 180
        while "window ready" not in output.read_text(errors="replace"):
            assert launcher.poll() is None, output.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no window: " + output.read_text()[-3000:]
            time.sleep(0.2)
        # The caller and Agent A join their call by themselves; speech into
        # every microphone gives A's live transcript something to write.
        history = home / "profiles" / "default-agent-a" / "history.sqlite3"
        segments: list[tuple[str, str]] = []
        deadline = time.monotonic() + 240
        while not any(text.strip() for _, text in segments):
            assert launcher.poll() is None, output.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no transcript: " + output.read_text()[-3000:]
            pause = np.zeros(SAMPLE_RATE, np.int16)
            pcm = np.concatenate([speech, pause])
            playing_for = len(pcm) / SAMPLE_RATE + 4.0
            subprocess.run(
                [
                    "pacat",
                    "--playback",
                    "--raw",
                    "--format=s16le",
                    f"--rate={SAMPLE_RATE}",
                    "--channels=1",
                    f"--device={ROOM}",
                ],
                input=pcm.tobytes(),
                env=devices,
                timeout=playing_for + 30,
                check=True,
            )
            end = time.monotonic() + 20
            while not segments and time.monotonic() < end:
                time.sleep(0.5)
                segments = _segments(history)
        app = _child(launcher.pid, packaged_app)
        assert app is not None
        # Its LiveKit server is the one in the bundle.
        assert _child(app, packaged_app.parent / "_internal" / "livekit-server") is not None
        os.kill(app, signal.SIGTERM)  # closes the windows: the app shuts down the normal way
        assert launcher.wait(timeout=120) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    text = output.read_text(errors="replace")
    assert not BUNDLE_FAILURES.search(text), text[-3000:]
    logs = list((home / "profiles").glob("*/logs/softphone.log"))
    assert logs
    for log in logs:
        content = log.read_text(errors="replace")
        assert not BUNDLE_FAILURES.search(content), f"{log}: {content[-3000:]}"
    assert any("windows ready" in log.read_text() for log in logs)
