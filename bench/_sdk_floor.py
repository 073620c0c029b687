"""The CPU the LiveKit SDK alone costs for one side of a call (``call_cpu_sdk_floor_pct``).

The same media as an agent's app in ``call_cpu_pct``, without the app: a
plain asyncio process joins the room, sends 20 ms frames into an
``rtc.AudioSource`` as they come due (the app's capture block), and reads the
other party's track in 20 ms frames (the app's speaker reader). No Qt, no
devices, no processing, no recording. What the app costs can only be
above this.

Run as ``python -m bench._sdk_floor URL SECONDS`` with the token in
``SDK_FLOOR_TOKEN``: it prints one JSON object, the process's CPU and its
main (Python) thread's share of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from livekit import rtc

SAMPLE_RATE = 48000
FRAME_MS = 20  # softphone.media.devices: BLOCK and READ_FRAME_MS
SETTLE_S = 3.0


def _thread_ticks() -> dict[str, int]:
    """CPU clock ticks so far of each thread of this process, by thread id."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


async def _send(source: rtc.AudioSource) -> None:
    """A quiet tone, one frame each time one is due, like a microphone."""
    n = SAMPLE_RATE * FRAME_MS // 1000
    pcm = (3000 * np.sin(2 * np.pi * 300 * np.arange(n) / SAMPLE_RATE)).astype(np.int16).tobytes()
    started, sent = time.monotonic(), 0
    while True:
        await source.capture_frame(rtc.AudioFrame(pcm, SAMPLE_RATE, 1, n))
        sent += 1
        await asyncio.sleep(max(0.0, started + sent * FRAME_MS / 1000 - time.monotonic()))


async def _receive(room: rtc.Room) -> None:
    """Read the first remote audio track there is, frame by frame."""
    while True:
        tracks = [
            pub.track
            for p in room.remote_participants.values()
            for pub in p.track_publications.values()
            if isinstance(pub.track, rtc.RemoteAudioTrack)
        ]
        if tracks:
            break
        await asyncio.sleep(0.05)
    stream = rtc.AudioStream.from_track(
        track=tracks[0], sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
    )
    async for _event in stream:
        pass


async def agent(url: str, token: str, seconds: float) -> dict[str, float]:
    """Join, send and receive; the CPU over ``seconds`` after settling."""
    room = rtc.Room()
    await room.connect(url, token)
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    tasks = [asyncio.ensure_future(_send(source)), asyncio.ensure_future(_receive(room))]
    try:
        await asyncio.sleep(SETTLE_S)
        before, cpu0, t0 = _thread_ticks(), os.times(), time.monotonic()
        await asyncio.sleep(seconds)
        after, cpu1, t1 = _thread_ticks(), os.times(), time.monotonic()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await room.disconnect()
    main = str(os.getpid())
    tick = os.sysconf("SC_CLK_TCK")
    main_s = (after.get(main, 0) - before.get(main, 0)) / tick
    total_s = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return {
        "cpu_pct": 100 * total_s / (t1 - t0),
        "main_thread_pct": 100 * main_s / (t1 - t0),
    }


if __name__ == "__main__":
    url, seconds = sys.argv[1], float(sys.argv[2])
    result = asyncio.run(agent(url, os.environ["SDK_FLOOR_TOKEN"], seconds))
    print(json.dumps(result), flush=True)
