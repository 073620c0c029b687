"""Both routes to clean audio, measured the same way: ``python -m tests.media.route_comparison``.

- ``apm``: the app's route, sounddevice capture and playback with
  ``rtc.AudioProcessingModule`` in between (:class:`~softphone.media.devices.AudioDevices`);
- ``platform``: ``rtc.PlatformAudio``, WebRTC's own device module, which
  captures, processes, publishes and plays by itself.

Each route runs the echo scene and the noise scene of :mod:`tests.media.laptop`
with its processing off and on, in a real call, and reports ERLE, SNR gain,
the mouth-to-ear delay of the agent's voice (room to far end, from the
alignment; 10 ms steps), and the process's CPU. Numbers for
``docs/notes-audio.md``; on a shared machine they are noisy.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.processing import ProcessingOptions
from softphone.media.session import RtcSession
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener
from tests.media.laptop import (
    FRAME,
    SAMPLE_RATE,
    EchoCall,
    Laptop,
    best_lag,
    echo_scene,
    erle_db,
    noise_scene,
    power_db,
    push_pcm,
    snr_db,
    stretch,
)


def cpu_s() -> float:
    """CPU seconds of this process so far (all threads)."""
    return time.process_time()


async def platform_agent(url: str, token: str, ec: bool, ns: bool, agc: bool) -> None:
    """The agent on ``rtc.PlatformAudio`` (a child process: the device module plays
    every room of its process, so the far end must live elsewhere)."""
    pa = rtc.PlatformAudio()
    source = pa.create_audio_source(
        rtc.PlatformAudioOptions(echo_cancellation=ec, noise_suppression=ns, auto_gain_control=agc)
    )
    async with RtcSession(url=url, token=token) as agent:
        await agent.publish_audio(source)  # type: ignore[arg-type]
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes stdin
    source.close()
    pa.close()


def child_cpu_s(pid: int) -> float:
    """CPU seconds of another process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_scene(
    listener: Listener,
    far_source: rtc.AudioSource,
    laptop: Laptop,
    far: np.ndarray,
    room: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Play a scene; return what the far end received (aligned) and the delay (samples)."""
    capture = listener.capture
    started = time.monotonic()
    laptop.play(room)
    await push_pcm(far_source, far)
    end = started + max(len(far), len(room)) / SAMPLE_RATE + 2.5
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    windows = [w for t, w in capture.windows() if t >= started]
    received = np.concatenate(windows) if windows else np.zeros(0)
    lag = best_lag(received, room.astype(np.float64) / 32768.0)
    env = [
        round(power_db(received[i : i + SAMPLE_RATE])) for i in range(0, len(received), SAMPLE_RATE)
    ]
    print("received dB per second:", env, "lag", lag, file=sys.stderr)
    return received[lag:], lag


def summarize(got: dict[str, tuple[np.ndarray, int]], cpu: dict[str, float]) -> dict[str, Any]:
    echo, noise = echo_scene(), noise_scene()
    erle = erle_db(got["echo_off"][0], got["echo_on"][0], echo.echo_span)
    gain = snr_db(got["noise_on"][0], noise.speech_span, noise.noise_span) - snr_db(
        got["noise_off"][0], noise.speech_span, noise.noise_span
    )
    voice = power_db(stretch(got["echo_on"][0], *echo.voice_span)) - power_db(
        stretch(got["echo_off"][0], *echo.voice_span)
    )
    return {
        "erle_db": round(erle, 1),
        "snr_gain_db": round(gain, 1),
        "voice_change_db": round(voice, 1),
        "room_to_far_ms": {k: round(v[1] * 1000 / SAMPLE_RATE) for k, v in got.items()},
        "cpu_pct": {k: round(v, 1) for k, v in cpu.items()},
    }


async def measure_apm(laptop: Laptop, url: str, minter: TokenMinter) -> dict[str, Any]:
    echo, noise = echo_scene(), noise_scene()
    off, on = ProcessingOptions.off(), ProcessingOptions()
    got: dict[str, tuple[np.ndarray, int]] = {}
    cpu: dict[str, float] = {}
    async with EchoCall(
        laptop=laptop, url=url, minter=minter, room="cmp-apm", processing=off
    ) as call:
        assert call._listener is not None
        for name, options, far, room in (
            ("echo_off", off, echo.far, echo.room),
            ("echo_on", on, echo.far, echo.room),
            ("noise_off", off, noise.silent, noise.noisy),
            ("noise_on", on, noise.silent, noise.noisy),
        ):
            call.devices.set_processing(options)
            c0, t0 = cpu_s(), time.monotonic()
            got[name] = await run_scene(call._listener, call._far_source, laptop, far, room)
            cpu[name] = 100 * (cpu_s() - c0) / (time.monotonic() - t0)
    return summarize(got, cpu)


async def measure_platform(laptop: Laptop, url: str, minter: TokenMinter) -> dict[str, Any]:
    echo, noise = echo_scene(), noise_scene()
    off, on = ProcessingOptions.off(), ProcessingOptions()
    got: dict[str, tuple[np.ndarray, int]] = {}
    cpu: dict[str, float] = {}
    far_source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    room = "cmp-pa"
    far_token = minter.mint(role="caller", identity="far", room=room).token
    async with RtcSession(url=url, token=far_token) as far_session:
        await far_session.publish_audio(far_source)
        for i, (name, o, farpcm, roompcm) in enumerate(
            (
                ("echo_off", off, echo.far, echo.room),
                ("echo_on", on, echo.far, echo.room),
                ("noise_off", off, noise.silent, noise.noisy),
                ("noise_on", on, noise.silent, noise.noisy),
            )
        ):
            identity = f"agent-{i}"
            token = minter.mint(role="agent", identity=identity, room=room).token
            flags = [str(int(x)) for x in (o.echo_cancellation, o.noise_suppression, o.auto_gain)]
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.media.route_comparison",
                    "--platform-agent",
                    url,
                    token,
                    *flags,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                await asyncio.to_thread(child.stdout.readline)
                listener = Listener(await far_session.wait_for_audio(identity, 20))
                await push_pcm(far_source, np.zeros(FRAME * 100, np.int16))
                c0, t0 = child_cpu_s(child.pid), time.monotonic()
                got[name] = await run_scene(listener, far_source, laptop, farpcm, roompcm)
                cpu[name] = 100 * (child_cpu_s(child.pid) - c0) / (time.monotonic() - t0)
                await listener.aclose()
            finally:
                assert child.stdin is not None
                child.stdin.close()
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    return summarize(got, cpu)


async def main() -> None:
    if sys.argv[1:2] == ["--platform-agent"]:
        url, token, ec, ns, agc = sys.argv[2:7]
        await platform_agent(url, token, ec == "1", ns == "1", agc == "1")
        return
    routes = sys.argv[1:] or ["apm", "platform"]
    with tempfile.TemporaryDirectory() as tmp, Laptop(Path(tmp)) as laptop:
        async with LocalLiveKitServer(binary=ensure_server_binary()) as server:
            minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
            out: dict[str, Any] = {}
            if "apm" in routes:
                out["apm"] = await measure_apm(laptop, server.url, minter)
            if "platform" in routes:
                out["platform"] = await measure_platform(laptop, server.url, minter)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
