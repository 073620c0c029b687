"""Two real RTC participants exchange real audio through the real server."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from livekit import rtc

from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener, dominant_freq, tone_level

pytestmark = pytest.mark.integration


async def test_tone_crosses_the_server_intact_and_continuous(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    a = minter.mint(role="caller", identity="caller-1", room=room_name)
    b = minter.mint(role="agent", identity="agent-1", room=room_name)
    async with (
        RtcSession(url=livekit_server.url, token=a.token) as sa,
        RtcSession(url=livekit_server.url, token=b.token) as sb,
    ):
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        await sa.publish_audio(source)
        tone = TonePlayer(source, freq=0.0)
        tone.start()
        audio = await sb.wait_for_audio("caller-1")
        listener = Listener(audio)
        await asyncio.sleep(1.0)  # let the jitter buffer settle on silence
        switched = tone.set_freq(440.0)
        await asyncio.sleep(2.5)
        await tone.aclose()
        await listener.aclose()

    cap = listener.capture
    onset = cap.first_time_with(440.0, after=switched - 0.5)
    assert onset is not None, "the tone never arrived"
    latency_ms = (onset - switched) * 1000
    print(f"\npublish-to-receive latency: {latency_ms:.0f} ms")
    assert latency_ms < 1000

    windows = [w for t, w in cap.windows() if onset + 0.3 <= t <= onset + 2.0]
    assert len(windows) > 100
    tone_audio = np.concatenate(windows)
    assert abs(dominant_freq(tone_audio) - 440.0) < 5.0
    # Continuous: the steady part carries the tone in (nearly) every 10 ms
    # window. A single 10 ms underrun is tolerated: the publisher is Python
    # pushing frames in real time, on a machine other tests keep busy.
    levels = [tone_level(w, 440.0) for w in windows]
    present = sum(level > 0.1 for level in levels) / len(levels)
    assert present >= 0.99, f"tone present in only {present:.1%} of 10 ms windows"
    assert cap.longest_gap_ms((440.0,), onset + 0.3, onset + 2.0) <= 10
    # Time-continuous: received samples keep pace with wall time.
    received_s = sum(len(w) for w in windows) / SAMPLE_RATE
    assert received_s > 1.5


async def test_mute_stops_audio_at_the_far_end(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    a = minter.mint(role="agent", identity="agent-m", room=room_name)
    b = minter.mint(role="caller", identity="caller-m", room=room_name)
    async with (
        RtcSession(url=livekit_server.url, token=a.token) as sa,
        RtcSession(url=livekit_server.url, token=b.token) as sb,
    ):
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        await sa.publish_audio(source)
        tone = TonePlayer(source, freq=440.0)
        tone.start()
        listener = Listener(await sb.wait_for_audio("agent-m"))
        await asyncio.sleep(1.0)
        sa.set_muted(True)
        muted_at = time.monotonic()
        assert sa.muted
        await asyncio.sleep(1.5)
        await tone.aclose()
        await listener.aclose()
    heard = [tone_level(w, 440.0) for t, w in listener.capture.windows() if t < muted_at]
    after = [tone_level(w, 440.0) for t, w in listener.capture.windows() if t > muted_at + 0.5]
    assert max(heard) > 0.1
    assert not after or max(after) < 0.02


async def test_a_session_muted_before_publishing_publishes_a_muted_track(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    # The publish request itself must say muted: a separate mute message sent
    # after it races an unmute that follows at once (the SDK sends each from a
    # task of its own), and the server could keep the track muted for good
    # (a standby caller promoted as it publishes: B heard nothing).
    grant = minter.mint(role="caller", identity="caller-pm", room=room_name)
    async with RtcSession(url=livekit_server.url, token=grant.token) as session:
        session.set_muted(True)
        await session.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100))
        (pub,) = session.room.local_participant.track_publications.values()
        assert pub.muted, "the server acknowledged the track unmuted"
        session.set_muted(False)
        assert not session.muted


async def test_rapid_mute_toggles_end_in_the_last_state_on_the_server(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_admin: RoomAdmin, room_name: str
) -> None:
    # Each SDK mute/unmute goes out from a task of its own; toggles in quick
    # succession (A muted for a transfer that then fails at once) could reach
    # the server reversed and leave the track muted there for good.
    grant = minter.mint(role="agent", identity="agent-tg", room=room_name)
    async with RtcSession(url=livekit_server.url, token=grant.token) as session:
        await session.publish_audio(rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100))
        for last in (False, True, False):
            for _ in range(5):
                session.set_muted(not last)
                session.set_muted(last)
            await asyncio.sleep(1.0)
            (me,) = await room_admin.list_participants(room_name)
            assert me.audio_tracks == 1
            assert me.unmuted_audio_tracks == (0 if last else 1), f"the app says muted={last}"


async def test_a_tone_player_outlives_a_refused_frame() -> None:
    """The SDK refuses a frame while another capture into the same source is
    under way. Two players on one source make that happen for real; each
    skips its refused frames and keeps playing (before, the first refusal
    ended a player's task without a word: hold audio that stops for good)."""
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    players = [TonePlayer(source, 440.0), TonePlayer(source, 880.0)]
    try:
        for player in players:
            player.start()
        await asyncio.sleep(1.5)
        assert all(player.running for player in players)
    finally:
        for player in players:
            await player.aclose()
        await source.aclose()
    assert not any(player.running for player in players)


async def test_a_tone_player_gives_up_on_a_source_that_takes_no_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = rtc.AudioSource(16000, 1, queue_size_ms=100)  # the player's frames are 48 kHz
    player = TonePlayer(source, 440.0)
    try:
        with caplog.at_level("WARNING", logger="softphone.media.tone"):
            player.start()
            await asyncio.sleep(0.5)
            assert player.running, "refused for 0.5 s: still trying"
            deadline = time.monotonic() + 10
            while player.running and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        assert not player.running
        assert any("takes no frames" in r.getMessage() for r in caplog.records)
    finally:
        await player.aclose()
        await source.aclose()
