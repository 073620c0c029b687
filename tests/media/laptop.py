"""A laptop on PulseAudio: speakers the microphone hears, for echo and noise measurements.

Not a fake of our code: real PulseAudio devices, reached by the real
:class:`~softphone.media.devices.AudioDevices` through PortAudio, and a real
RTC participant at the far end of a real LiveKit call.

- :class:`Laptop` starts a private PulseAudio (own ``XDG_RUNTIME_DIR``, no
  default modules) with a null sink (the laptop's speakers) and a virtual
  microphone remapped from the sink's monitor: whatever the speakers play,
  the microphone picks up, as laptop speakers leak into the laptop's
  microphone. The agent's own voice and the room's noise are played into the
  same sink by an output stream of the test's own (PortAudio, opened once and
  kept running, so a scene starts on time: a ``pacat`` started per scene
  began up to 2 s late on a loaded machine), so the microphone hears them
  mixed with the echo.
- :class:`EchoCall` is one call: the agent's devices (with the processing
  under test) publish the microphone; a far-end participant speaks (its
  speech is what the agent's speakers play, and what echoes) and records
  what it receives from the agent.

The measures (:func:`power_db`, :func:`erle_db`, :func:`snr_db`) compare
stretches of what the far end received; they are used by the tests and by
``bench/app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import sounddevice as sd
from livekit import rtc

from softphone.media.devices import SAMPLE_RATE, AudioDevices, rescan
from softphone.media.processing import ProcessingOptions
from softphone.media.session import RtcSession
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener
from tests.speech.corpus import render_turn

__all__ = ["SAMPLE_RATE", "EchoCall", "Laptop", "echo_scene", "noise_scene"]

SPEAKERS = "laptop_speakers"
MIC = "laptop_mic"
FRAME = SAMPLE_RATE // 100


class Laptop:
    """A private PulseAudio whose microphone hears its speakers (see the module docstring).

    Args:
        runtime: A fresh private directory for the server's socket and state.
    """

    def __init__(self, runtime: Path) -> None:
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
        self.env.pop("PULSE_SERVER", None)
        self._binary = shutil.which("pulseaudio")
        self._previous: str | None = None
        self._lock = threading.Lock()
        self._room = np.zeros(0, np.int16)
        self._stream: Any = None

    def start(self) -> Laptop:
        """Start the server, make its devices the defaults, and point PortAudio at it."""
        assert self._binary, "pulseaudio is missing: ./dev setup installs it"
        subprocess.run(
            [
                self._binary,
                "-D",
                "-n",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "-L",
                "module-native-protocol-unix",
                "-L",
                f"module-null-sink sink_name={SPEAKERS} "
                "sink_properties=device.description=Laptop-Speakers",
                "-L",
                f"module-remap-source source_name={MIC} master={SPEAKERS}.monitor "
                "source_properties=device.description=Laptop-Mic",
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while self._pactl("info").returncode != 0:
            assert time.monotonic() < deadline, "pulseaudio did not come up"
            time.sleep(0.1)
        self._pactl("set-default-sink", SPEAKERS, check=True)
        self._pactl("set-default-source", MIC, check=True)
        self._previous = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = self.env["XDG_RUNTIME_DIR"]
        rescan()  # PortAudio may have been initialised before this server existed
        self._stream = sd.OutputStream(
            channels=1,
            samplerate=SAMPLE_RATE,
            dtype="int16",
            blocksize=FRAME * 4,
            # A deep buffer: on a loaded machine the callback thread stalls
            # now and then, and the room's sound must not stretch (its own
            # delay does not matter: scenes are aligned by their content).
            latency=0.5,
            callback=self._callback,
        )
        self._stream.start()
        return self

    def _callback(self, outdata: np.ndarray, frames: int, _t: Any, _status: Any) -> None:
        with self._lock:
            n = min(frames, len(self._room))
            outdata[:n, 0] = self._room[:n]
            outdata[n:, 0] = 0
            self._room = self._room[n:]

    def _pactl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, check=check, timeout=10
        )

    def play(self, pcm: np.ndarray) -> None:
        """Play ``pcm`` (int16, 48 kHz mono) into the room, from now (instead of what played)."""
        with self._lock:
            self._room = np.ascontiguousarray(pcm, dtype=np.int16)

    def stop(self) -> None:
        """Stop the room's stream and the server; PortAudio forgets its devices."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.abort()
                self._stream.close()
            self._stream = None
        if self._binary:
            subprocess.run([self._binary, "--kill"], env=self.env, capture_output=True, timeout=30)
        if self._previous is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = self._previous
        rescan()

    def __enter__(self) -> Laptop:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def push_pcm(source: rtc.AudioSource, pcm: np.ndarray) -> None:
    """Push ``pcm`` into ``source`` in real time, 10 ms at a time."""
    begin = time.monotonic()
    for i, offset in enumerate(range(0, len(pcm) - FRAME + 1, FRAME)):
        ahead = begin + i * 0.01 - time.monotonic()
        if ahead > 0.02:
            await asyncio.sleep(ahead - 0.02)
        block = np.ascontiguousarray(pcm[offset : offset + FRAME], dtype=np.int16)
        await source.capture_frame(rtc.AudioFrame(block.tobytes(), SAMPLE_RATE, 1, FRAME))


class EchoCall:
    """An agent on the laptop in a call with a far-end participant (see the module docstring).

    Use as ``async with EchoCall(...) as call: received = await call.run(far, room)``.

    Args:
        laptop: The laptop's PulseAudio (started).
        url: The LiveKit server.
        minter: Mints the two participants' tokens.
        room: The call's room.
        processing: What cleans the agent's microphone.
    """

    def __init__(
        self,
        *,
        laptop: Laptop,
        url: str,
        minter: TokenMinter,
        room: str,
        processing: ProcessingOptions,
    ) -> None:
        self.laptop = laptop
        self._url = url
        self._minter = minter
        self._room = room
        self.devices = AudioDevices(processing=processing)
        self._stack = contextlib.AsyncExitStack()
        self._far_source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        self._listener: Listener | None = None

    async def __aenter__(self) -> EchoCall:
        stack = self._stack
        await stack.__aenter__()
        try:
            await self.devices.start()
            stack.push_async_callback(self.devices.aclose)
            assert self.devices.mic is not None and self.devices.mic.device_name is not None, (
                "the laptop's microphone did not open"
            )
            assert self.devices.speaker.device_name is not None, "the speakers did not open"
            agent = RtcSession(
                url=self._url,
                token=self._minter.mint(role="agent", identity="agent", room=self._room).token,
            )
            far = RtcSession(
                url=self._url,
                token=self._minter.mint(role="caller", identity="far", room=self._room).token,
            )
            for session in (agent, far):
                await session.connect()
                stack.push_async_callback(session.aclose)
            await agent.publish_audio(self.devices.mic.source)
            await far.publish_audio(self._far_source)
            # Silence first, so the track exists and the agent's speaker plays it.
            await push_pcm(self._far_source, np.zeros(FRAME * 10, np.int16))
            self.devices.speaker.add(await agent.wait_for_audio("far", 20))
            self._listener = Listener(await far.wait_for_audio("agent", 20))
            stack.push_async_callback(self._listener.aclose)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def run(self, far: np.ndarray, room: np.ndarray, *, tail_s: float = 3.0) -> np.ndarray:
        """Play one scene and return what the far end received of it.

        ``far`` is what the far end says (the agent's speakers play it, the
        microphone hears it back); ``room`` is played into the room at the
        same instant (the agent's own voice, noise). Both are int16 at 48 kHz
        on one timeline that starts now.

        Returns:
            What the far end received of the room, as floats in [-1, 1], on
            the scene's timeline: shifted by the delay at which the room's
            sound best matches it (the mouth-to-ear delay varies between
            scenes on a loaded machine, so arrival times alone misplace it).
        """
        assert self._listener is not None
        capture = self._listener.capture
        started = time.monotonic()
        self.laptop.play(room)
        await push_pcm(self._far_source, far)
        end = started + max(len(far), len(room)) / SAMPLE_RATE + tail_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        windows = [w for t, w in capture.windows() if t >= started]
        received = np.concatenate(windows) if windows else np.zeros(0)
        lag = best_lag(received, room.astype(np.float64) / 32768.0)
        return received[lag:]


def envelope_db(x: np.ndarray) -> np.ndarray:
    """Power of each 10 ms of ``x`` in dB."""
    n = len(x) // FRAME * FRAME
    frames = x[:n].reshape(-1, FRAME)
    db: np.ndarray = 10 * np.log10(np.mean(np.square(frames), axis=1) + 1e-10)
    return db


def best_lag(received: np.ndarray, sent: np.ndarray, max_lag_s: float = 4.0) -> int:
    """The delay (samples, 10 ms steps) at which ``received`` best matches ``sent``.

    Compares loudness envelopes, which codecs and processing keep, and
    waveforms, which they do not.
    """
    a, b = envelope_db(received), envelope_db(sent)
    b = b - b.mean()
    best, best_score = 0, -math.inf
    for lag in range(0, min(int(max_lag_s * 100), max(0, len(a) - len(b) // 2))):
        seg = a[lag : lag + len(b)]
        ref = b[: len(seg)]
        score = float(np.dot(seg - seg.mean(), ref)) / len(seg)
        if score > best_score:
            best, best_score = lag, score
    return best * FRAME


def power_db(x: np.ndarray) -> float:
    """Mean power of ``x`` (floats in [-1, 1]) in dBFS, floored at -140."""
    p = float(np.mean(np.square(x))) if x.size else 0.0
    return 10 * math.log10(max(p, 1e-14))


ERLE_CAP_DB = 60.0  # a window cleaned down to digital silence counts as this


def erle_db(off: np.ndarray, on: np.ndarray, span: tuple[float, float]) -> float:
    """Echo return loss enhancement over ``span``: the mean over 100 ms windows
    (where echo is present with processing off) of how many dB processing took off.

    Averaged in dB, window by window, as echo cancellers are usually rated: a
    burst of echo let through while the canceller re-learns after a glitch of
    the sound device (an underrun shifts the echo's delay) weighs for its
    duration, not for its loudness. Each window counts at most ``ERLE_CAP_DB``.
    """
    a, b = stretch(off, *span), stretch(on, *span)
    n = SAMPLE_RATE // 10
    gains = []
    for i in range(0, min(len(a), len(b)) - n + 1, n):
        p_off = power_db(a[i : i + n])
        if p_off > -50:  # echo present here
            gains.append(min(ERLE_CAP_DB, p_off - power_db(b[i : i + n])))
    return float(np.mean(gains)) if gains else 0.0


def stretch(x: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples of ``x`` between two times (seconds from its start)."""
    return x[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]


def snr_db(x: np.ndarray, speech: tuple[float, float], noise: tuple[float, float]) -> float:
    """Speech-to-noise ratio: power over ``speech`` (less the noise) against power over ``noise``."""
    p_speech = float(np.mean(np.square(stretch(x, *speech))))
    p_noise = max(float(np.mean(np.square(stretch(x, *noise)))), 1e-14)
    return 10 * math.log10(max(p_speech - p_noise, 1e-14) / p_noise)


def timeline(total_s: float, *parts: tuple[float, np.ndarray]) -> np.ndarray:
    """An int16 track ``total_s`` long with each ``(start_s, pcm)`` placed at its start."""
    out = np.zeros(int(total_s * SAMPLE_RATE), np.int32)
    for start_s, pcm in parts:
        at = int(start_s * SAMPLE_RATE)
        n = min(len(pcm), len(out) - at)
        out[at : at + n] += pcm[:n]
    return np.clip(out, -32768, 32767).astype(np.int16)


def white_noise(seconds: float, rms: float, seed: int = 7) -> np.ndarray:
    """Steady white noise, int16 at 48 kHz, with RMS ``rms`` (of full scale)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(int(seconds * SAMPLE_RATE)) * rms * 32767
    return np.clip(noise, -32768, 32767).astype(np.int16)


# ---- the scenes the tests and ``bench/app.py`` play ---------------------------------

FAR_WARMUP = (
    "Hello, I am calling about my internet bill, it is much higher this month than it was "
    "last month."
)
FAR_MEASURED = "I would like to know why I was charged twice for the same service in October."
AGENT = (
    "Thank you for calling the support line, my name is Sara and I will be helping you today. "
    "I can see your account here on my screen. It looks like the last payment was taken twice "
    "by mistake. I am sorry about that. I will send the extra payment back to your card right "
    "away, and you should see it within a few days. Is there anything else I can help you with "
    "today?"
)
FAR_VOICE = "en-us"
AGENT_VOICE = "en-us+m3"
# Steady noise about 20 dB under the agent's voice: a busy contact-center row.
NOISE_RMS = 0.006
EDGE_S = 0.3  # kept off the edges of a measured stretch (alignment is to 10 ms)


def seconds(pcm: np.ndarray) -> float:
    """Duration of 48 kHz samples."""
    return len(pcm) / SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class EchoScene:
    """The far end talks twice (the echo canceller learns the room in the first
    turn), then the agent talks while the far end is quiet.

    Attributes:
        far: What the far end says.
        room: What the agent says into the microphone.
        echo_span: Where the second far-end turn (the measured echo) lies.
        voice_span: Where the agent's voice lies.
    """

    far: np.ndarray
    room: np.ndarray
    echo_span: tuple[float, float]
    voice_span: tuple[float, float]


def echo_scene() -> EchoScene:
    """The echo scene, spoken by espeak-ng (cached)."""
    warmup = render_turn(FAR_WARMUP, FAR_VOICE)
    measured = render_turn(FAR_MEASURED, FAR_VOICE)
    agent = render_turn(AGENT, AGENT_VOICE)[: 5 * SAMPLE_RATE]
    t_measured = 0.5 + seconds(warmup) + 0.5
    t_agent = t_measured + seconds(measured) + 1.5
    total = t_agent + seconds(agent) + 0.5
    return EchoScene(
        far=timeline(total, (0.5, warmup), (t_measured, measured)),
        room=timeline(total, (t_agent, agent)),
        echo_span=(t_measured + EDGE_S, t_measured + seconds(measured) - EDGE_S),
        voice_span=(t_agent + EDGE_S, t_agent + seconds(agent) - EDGE_S),
    )


@dataclasses.dataclass(frozen=True)
class NoiseScene:
    """The agent talks in a noisy room (noise alone first: the suppressor learns it).

    Attributes:
        clean: The agent's voice alone.
        noisy: The same with steady white noise throughout.
        silent: The far end's part (silence).
        speech_span: Where the voice lies.
        noise_span: Where there is noise alone, after the voice.
        said_span: Where to listen to transcribe the voice.
        text: What the agent says.
    """

    clean: np.ndarray
    noisy: np.ndarray
    silent: np.ndarray
    speech_span: tuple[float, float]
    noise_span: tuple[float, float]
    said_span: tuple[float, float]
    text: str


def noise_scene(noise_rms: float = NOISE_RMS) -> NoiseScene:
    """The noise scene, spoken by espeak-ng (cached)."""
    agent = render_turn(AGENT, AGENT_VOICE)
    t_agent = 4.0
    total = t_agent + seconds(agent) + 3.5
    clean = timeline(total, (t_agent, agent))
    return NoiseScene(
        clean=clean,
        noisy=timeline(total, (0.0, white_noise(total, noise_rms)), (t_agent, agent)),
        silent=np.zeros_like(clean),
        speech_span=(t_agent + EDGE_S, t_agent + seconds(agent) - EDGE_S),
        noise_span=(t_agent + seconds(agent) + 1.0, total - EDGE_S),
        said_span=(t_agent - 0.5, t_agent + seconds(agent) + 0.8),
        text=AGENT,
    )
