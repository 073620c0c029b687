"""Hot-plug with clean audio on: a headset unplugged mid-call falls back, and returns.

The same pluggable headset as the UI's hot-plug test (an ALSA PCM backed by a
PulseAudio of its own; its microphone hears a 660 Hz tone), next to the
laptop's own devices (its microphone hears a 440 Hz tone played into its
speakers by the laptop's PulseAudio). The agent's devices run every kind of
processing; a far-end participant tells by the tone which microphone it hears.
Steady tones are what a noise suppressor learns to lower, so the levels asked
for here are lower than the UI test's (processing off there is not assumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.devices import AudioDevices, rescan
from softphone.media.processing import ProcessingOptions
from softphone.media.session import RtcSession
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Capture, Listener
from tests.media.laptop import SPEAKERS, Laptop
from tests.ui.test_hotplug import (
    ALSA_MAIN_CONFIG,
    DEFAULT_HZ,
    HEADSET,
    HEADSET_HZ,
    Headset,
    _heard,
)

pytestmark = pytest.mark.integration

HEARD = 0.02  # a tone the far end hears (after suppression); the other is 5 times lower


@pytest.fixture
def headset(
    laptop: Laptop, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Headset]:
    """A plugged-in headset, and a 440 Hz tone in the laptop's room; both gone after."""
    assert ALSA_MAIN_CONFIG.exists(), "ALSA's main configuration is missing (libasound2)"
    config = tmp_path_factory.mktemp("alsa") / "headset.conf"
    device = Headset(tmp_path_factory.mktemp("headset"), config)
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"{ALSA_MAIN_CONFIG}:{config}")
    tone = subprocess.run(
        ["pactl", "load-module", "module-sine", f"sink={SPEAKERS}", f"frequency={int(DEFAULT_HZ)}"],
        env=laptop.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    device.start()
    try:
        device.plug()
        rescan()
        yield device
    finally:
        if device.plugged:
            device.unplug()
        device.stop()
        subprocess.run(["pactl", "unload-module", tone], env=laptop.env, timeout=10)
        monkeypatch.undo()
        rescan()


async def _until(cond: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _steady(capture: Capture, hz: float, what: str) -> dict[float, float]:
    """Wait until ``hz`` is heard, then the tone levels over the next second."""
    since = time.monotonic()
    await _until(lambda: _heard(capture, since, time.monotonic())[hz] > HEARD, what)
    start = time.monotonic()
    await asyncio.sleep(1.0)
    return _heard(capture, start, time.monotonic())


async def test_headset_unplugged_and_replugged_with_processing_on(
    headset: Headset, livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    devices = AudioDevices(
        input_device=HEADSET, output_device=HEADSET, processing=ProcessingOptions()
    )
    async with contextlib.AsyncExitStack() as stack:
        await devices.start()
        stack.push_async_callback(devices.aclose)
        agent = RtcSession(
            url=livekit_server.url,
            token=minter.mint(role="agent", identity="agent", room=room_name).token,
        )
        far = RtcSession(
            url=livekit_server.url,
            token=minter.mint(role="caller", identity="far", room=room_name).token,
        )
        for session in (agent, far):
            await session.connect()
            stack.push_async_callback(session.aclose)
        assert devices.mic is not None
        assert (devices.mic.device_name, devices.speaker.device_name) == (HEADSET, HEADSET)
        await agent.publish_audio(devices.mic.source)
        listener = Listener(await far.wait_for_audio("agent", 20))
        stack.push_async_callback(listener.aclose)
        capture = listener.capture

        first = devices.processor.frames
        before = await _steady(capture, HEADSET_HZ, "the headset's microphone at the far end")

        headset.unplug()
        await _until(
            lambda: devices.mic is not None and devices.mic.device_name not in (None, HEADSET),
            "the fallback to the laptop's microphone",
        )
        fallback = (devices.mic.device_name, devices.speaker.device_name)
        during = await _steady(capture, DEFAULT_HZ, "the laptop's microphone at the far end")

        headset.plug()
        await _until(
            lambda: devices.mic is not None and devices.mic.device_name == HEADSET,
            "the headset picked again",
        )
        after = await _steady(capture, HEADSET_HZ, "the headset's microphone again")
        last = devices.processor.frames
        options = devices.processing
        speaker = devices.speaker.device_name

    assert before[HEADSET_HZ] > HEARD and before[DEFAULT_HZ] < before[HEADSET_HZ] / 5, before
    assert fallback[0] != HEADSET and fallback[1] not in (None, HEADSET), fallback
    assert during[DEFAULT_HZ] > HEARD and during[HEADSET_HZ] < during[DEFAULT_HZ] / 5, during
    assert after[HEADSET_HZ] > HEARD and after[DEFAULT_HZ] < after[HEADSET_HZ] / 5, after
    assert speaker == HEADSET
    # The processing stayed on and kept running through both switches.
    assert options == ProcessingOptions()
    assert last - first > 100, (first, last)
