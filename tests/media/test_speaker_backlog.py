"""The speaker keeps no standing backlog: what a stall piled up is dropped, the rest plays.

A far-end participant sends a steady tone; the agent's :class:`Speaker` plays
it on the laptop's speakers (a private PulseAudio). The event loop is then
stalled for 300 ms, as a busy app's loop is: the remote stream's frames pile
up and arrive in a burst, and the reader and the device run at the same rate
afterwards, so without trimming that burst stays in the call as delay.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.devices import (
    BACKLOG_KEEP,
    READ_FRAME_MS,
    SAMPLE_RATE,
    Speaker,
    list_devices,
)
from softphone.media.session import RtcSession
from softphone.media.tone import TonePlayer
from softphone.server.token_minter import TokenMinter
from tests.media.laptop import Laptop

pytestmark = pytest.mark.integration

STALL_S = 0.3


async def _floor_ms(speaker: Speaker, seconds: float) -> float:
    """The least audio the speaker held for its track over ``seconds`` (sampled every 10 ms)."""
    least = float("inf")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        least = min(least, speaker.backlog_ms())
        await asyncio.sleep(0.01)
    return least


async def test_a_backlog_left_by_a_stall_does_not_stay_as_delay(
    laptop: Laptop, livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    speakers = next(d for d in list_devices("output") if d.default)
    speaker = Speaker()
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    tone = TonePlayer(source, 440.0)
    try:
        async with (
            RtcSession(
                url=livekit_server.url,
                token=minter.mint(role="caller", identity="far", room=room_name).token,
            ) as far,
            RtcSession(
                url=livekit_server.url,
                token=minter.mint(role="agent", identity="agent", room=room_name).token,
            ) as agent,
        ):
            await far.publish_audio(source)
            tone.start()
            speaker.open(speakers)
            assert speaker.device_name is not None, "the laptop's speakers did not open"
            speaker.add(await agent.wait_for_audio("far", 20))
            await asyncio.sleep(2.0)
            settled = await _floor_ms(speaker, 1.5)
            trimmed_before = speaker.trimmed_ms
            time.sleep(STALL_S)  # the loop stalls, as a busy app's does
            burst = 0.0
            for _ in range(10):  # the burst arrives as the loop runs again
                await asyncio.sleep(0.01)
                burst = max(burst, speaker.backlog_ms())
            await asyncio.sleep(2.0)
            after = await _floor_ms(speaker, 1.5)
            assert speaker.levels.level > 0.05, "the tone should still be playing"
    finally:
        await tone.aclose()
        await speaker.aclose()
        await source.aclose()
    assert burst >= 60, f"the stall should have left a backlog ({burst:.0f} ms)"
    # What never drained is gone: BACKLOG_KEEP stays for the reader's jitter.
    # The floor is sampled from the loop, not right after a device callback: a
    # reader frame may land in between (40 ms was seen on CI). Untrimmed, the
    # backlog would stand near the cap (MAX_BUFFER_SAMPLES, 100 ms).
    bound = (BACKLOG_KEEP * 1000 / SAMPLE_RATE) + READ_FRAME_MS + 5
    assert settled <= bound, f"a standing backlog of {settled:.0f} ms before the stall"
    assert after <= bound, f"a standing backlog of {after:.0f} ms after the stall"
    # Only the surplus was dropped, not the stream.
    assert 0 < speaker.trimmed_ms - trimmed_before <= 1000 * STALL_S + 50
