"""Foundation numbers: livekit-server start-to-ready and loopback audio latency.

Usage: ``./dev bench foundation [--runs N] [--json] [--build]``

- start-to-ready: from spawning ``livekit-server --dev`` to its HTTP endpoint
  answering, over N fresh servers;
- audio latency: a publisher switches a 440 Hz tone on; the time until a
  subscriber in the same process receives it (publish to receive, one clock);
- device to device: a beep played into a PulseAudio virtual microphone
  (a null sink's monitor remapped as a source) until it comes out of the far
  end's speaker device (another null sink, read from its monitor): the app's
  own ``Microphone`` (audio processing on) and ``Speaker`` on a real call;
  the mouth's and the ear's times are PortAudio's for their own streams in
  this process (the beep's first sample reaching the mouth sink, the block
  captured from the ear's monitor);
- with ``--build``: the time to build the pinned server from the Go module
  registry into a scratch cache (minutes; needs network to the Go proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sounddevice as sd
from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import build_server_binary, ensure_server_binary
from softphone.media.devices import Microphone, Speaker, list_devices, rescan
from softphone.media.processing import AudioProcessor, ProcessingOptions
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def start_times(binary: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        async with LocalLiveKitServer(binary=binary) as server:
            assert server.startup_seconds is not None
            out.append(server.startup_seconds * 1000)
    return out


async def latencies(binary: Path, runs: int) -> list[float]:
    out = []
    async with LocalLiveKitServer(binary=binary) as server:
        minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        for i in range(runs):
            room = f"bench-{i}"
            a = minter.mint(role="caller", identity="pub", room=room)
            b = minter.mint(role="agent", identity="sub", room=room)
            async with (
                RtcSession(url=server.url, token=a.token) as sa,
                RtcSession(url=server.url, token=b.token) as sb,
            ):
                source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
                await sa.publish_audio(source)
                tone = TonePlayer(source, freq=0.0)
                tone.start()
                listener = Listener(await sb.wait_for_audio("pub"))
                await asyncio.sleep(0.8)
                switched = tone.set_freq(440.0)
                await asyncio.sleep(0.6)
                await tone.aclose()
                await listener.aclose()
            onset = listener.capture.first_time_with(440.0, after=switched - 0.2)
            if onset is not None:
                out.append((onset - switched) * 1000)
    return out


CHUNK = SAMPLE_RATE // 100  # 10 ms
BEEP_HZ = 1000.0


@contextlib.contextmanager
def mouth_and_ear(tmp: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio: a ``mouth`` sink whose monitor is the default microphone, and an
    ``ear`` sink that is the default speaker; PortAudio is pointed at it while it runs."""
    binary = shutil.which("pulseaudio")
    if binary is None:
        raise RuntimeError("pulseaudio is missing: ./dev setup installs it")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp), "HOME": str(tmp)}
    env.pop("PULSE_SERVER", None)
    subprocess.run(
        [
            binary,
            "-D",
            "-n",
            "--exit-idle-time=-1",
            "-L",
            "module-native-protocol-unix",
            "-L",
            "module-null-sink sink_name=mouth",
            "-L",
            "module-null-sink sink_name=ear",
            "-L",
            "module-remap-source source_name=mic master=mouth.monitor",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    previous = os.environ.get("XDG_RUNTIME_DIR")
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("pulseaudio did not come up")
            time.sleep(0.1)
        subprocess.run(["pactl", "set-default-sink", "ear"], env=env, check=True)
        subprocess.run(["pactl", "set-default-source", "mic"], env=env, check=True)
        os.environ["XDG_RUNTIME_DIR"] = str(tmp)
        rescan()
        yield env
    finally:
        subprocess.run([binary, "--kill"], env=env, capture_output=True, timeout=30)
        if previous is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = previous
        rescan()


@contextlib.contextmanager
def pulse_default(var: str, name: str) -> Iterator[None]:
    """Streams opened inside go to (or come from) ``name``: libpulse reads
    ``PULSE_SINK``/``PULSE_SOURCE`` when the ALSA pulse plugin opens a stream."""
    os.environ[var] = name
    try:
        yield
    finally:
        os.environ.pop(var, None)


class Mouth:
    """Plays into the ``mouth`` sink (a stream of this process); beeps on request.

    A beep's onset is when PortAudio says its first sample reaches the sink.
    (pacat fed through a pipe was no good: whatever it had not read yet when
    it connected stayed in the pipe as delay, 0.6 s of it.)
    """

    def __init__(self) -> None:
        t = np.arange(SAMPLE_RATE // 5) / SAMPLE_RATE  # 200 ms
        self._beep = (0.3 * np.sin(2 * np.pi * BEEP_HZ * t) * 32767).astype(np.int16)
        self._left = np.zeros(0, np.int16)
        self._asked = False
        self.onsets: list[float] = []
        with pulse_default("PULSE_SINK", "mouth"):
            self._stream = sd.OutputStream(
                channels=1,
                samplerate=SAMPLE_RATE,
                dtype="int16",
                blocksize=CHUNK,
                latency="low",
                callback=self._callback,
            )
            self._stream.start()

    def beep(self) -> None:
        """Start a beep with the next block."""
        self._asked = True

    def _callback(self, outdata: np.ndarray, frames: int, t: Any, _status: Any) -> None:
        if self._asked and not self._left.size:
            self._asked = False
            self._left = self._beep
            self.onsets.append(time.monotonic() + (t.outputBufferDacTime - t.currentTime))
        n = min(frames, len(self._left))
        outdata[:n, 0] = self._left[:n]
        outdata[n:, 0] = 0
        self._left = self._left[n:]

    def close(self) -> None:
        self._stream.abort()
        self._stream.close()


class Ear:
    """Records the ``ear`` sink's monitor: when each block was captured, how loud the beep."""

    def __init__(self) -> None:
        self._ref = np.exp(-2j * np.pi * BEEP_HZ * np.arange(CHUNK) / SAMPLE_RATE)
        self.heard: list[tuple[float, float]] = []  # (captured at, beep level)
        with pulse_default("PULSE_SOURCE", "ear.monitor"):
            self._stream = sd.InputStream(
                channels=1,
                samplerate=SAMPLE_RATE,
                dtype="int16",
                blocksize=CHUNK,
                latency="low",
                callback=self._callback,
            )
            self._stream.start()

    def _callback(self, indata: np.ndarray, frames: int, t: Any, _status: Any) -> None:
        x = indata[:, 0].astype(np.float64) / 32768
        level = float(2 * abs(np.dot(x[:CHUNK], self._ref[: len(x)])) / CHUNK)
        self.heard.append((time.monotonic() - (t.currentTime - t.inputBufferAdcTime), level))

    def first_after(self, t: float, threshold: float = 0.02) -> float | None:
        """When the beep was first heard after ``t``."""
        for captured, level in list(self.heard):
            if captured > t and level > threshold:
                return captured
        return None

    def close(self) -> None:
        self._stream.abort()
        self._stream.close()


async def device_latencies(binary: Path, runs: int) -> list[float]:
    """Mouth (virtual microphone) to ear (far speaker device), ms, one beep per run."""
    out: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, mouth_and_ear(Path(tmp)):
        inputs, outputs = list_devices("input"), list_devices("output")
        mic_device = next(d for d in inputs if d.default)
        ear_device = next(d for d in outputs if d.default)
        async with LocalLiveKitServer(binary=binary) as server:
            minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
            room = "bench-devices"
            mic = Microphone(processor=AudioProcessor(ProcessingOptions()))
            speaker = Speaker()
            mouth, ear = Mouth(), Ear()
            try:
                async with (
                    RtcSession(
                        url=server.url,
                        token=minter.mint(role="caller", identity="a", room=room).token,
                    ) as sa,
                    RtcSession(
                        url=server.url,
                        token=minter.mint(role="agent", identity="b", room=room).token,
                    ) as sb,
                ):
                    mic.open(mic_device)
                    speaker.open(ear_device)
                    await sa.publish_audio(mic.source)
                    speaker.add(await sb.wait_for_audio("a", 20))
                    await asyncio.sleep(2.0)
                    for _ in range(runs):
                        mouth.beep()
                        await asyncio.sleep(1.2)
                    await asyncio.sleep(0.5)
            finally:
                mouth.close()
                ear.close()
                await speaker.aclose()
                await mic.aclose()
    for onset in mouth.onsets:
        heard = ear.first_after(onset)
        if heard is not None and heard - onset < 1.0:
            out.append((heard - onset) * 1000)
    return out


def build_time() -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        started = time.monotonic()
        build_server_binary(env)
        return time.monotonic() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--build", action="store_true", help="also time a fresh server build")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    binary = ensure_server_binary()
    starts = await start_times(binary, args.runs)
    lat = await latencies(binary, args.runs)
    d2d = await device_latencies(binary, args.runs)
    result: dict[str, Any] = {
        "server_start_ms": {
            "p50": round(statistics.median(starts), 1),
            "p95": round(pct(starts, 95), 1),
        },
        "audio_latency_ms": {
            "p50": round(statistics.median(lat), 1) if lat else None,
            "p95": round(pct(lat, 95), 1) if lat else None,
            "measured": len(lat),
            "runs": args.runs,
        },
        "device_to_device_ms": {
            "p50": round(statistics.median(d2d), 1) if d2d else None,
            "p95": round(pct(d2d, 95), 1) if d2d else None,
            "measured": len(d2d),
            "runs": args.runs,
        },
    }
    if args.build:
        result["server_build_s"] = round(build_time(), 1)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'metric':<34}{'p50':>10}{'p95':>10}")
    print(
        f"{'server start-to-ready (ms)':<34}{result['server_start_ms']['p50']:>10}{result['server_start_ms']['p95']:>10}"
    )
    al = result["audio_latency_ms"]
    print(f"{'audio publish-to-receive (ms)':<34}{al['p50']!s:>10}{al['p95']!s:>10}")
    dd = result["device_to_device_ms"]
    print(f"{'audio mic-device-to-speaker (ms)':<34}{dd['p50']!s:>10}{dd['p95']!s:>10}")
    if "server_build_s" in result:
        print(f"{'server build from Go registry (s)':<34}{result['server_build_s']:>10}")


if __name__ == "__main__":
    asyncio.run(main())
