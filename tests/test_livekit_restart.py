"""A LiveKit server restart: the apps are back with audio promptly, and nothing of the call is lost.

The server is killed (SIGKILL) and started again on the same ports
(``LocalLiveKitServer.restart``); it comes back empty. Every session joins
afresh as soon as the server answers, instead of waiting out the SDK's
backoff, and puts back what it had: the mic (muted if it was), a hold track
still for the caller's ears only, RPC handlers, attributes. The agent's
recording and live transcript go on from the new tracks, the gap marked in
the call's timeline. Own server per module: restarting the session's would
disturb every other test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from softphone.client.agent_controller import GAP_SPEAKER, AgentController, MediaGap
from softphone.client.call_controller import CallController
from softphone.client.context import AppContext
from softphone.config import Settings
from softphone.domain.transcript import TranscriptSegment
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import Reconnected, RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from softphone.store.history import HistoryStore
from tests.audio_probe import Listener, tone_level
from tests.speech.corpus import read_wav, render_turn

pytestmark = pytest.mark.integration

CALLER_HZ = 440.0
AGENT_HZ = 660.0
HOLD_HZ = 330.0
HEARD = 0.5


@pytest.fixture(scope="module")
async def server(artifacts_dir: Path) -> AsyncIterator[LocalLiveKitServer]:
    """A LiveKit server of this module's own (it gets restarted)."""
    lk = LocalLiveKitServer(
        binary=ensure_server_binary(), log_path=artifacts_dir / "livekit-restart.log"
    )
    async with lk:
        yield lk


@pytest.fixture(scope="module")
def tokens(server: LocalLiveKitServer) -> TokenMinter:
    return TokenMinter(api_key=server.api_key, api_secret=server.api_secret)


async def hears(
    session: RtcSession, identity: str, freq: float, *, name: str = "microphone"
) -> float:
    """Share of 10 ms windows of ``identity``'s track ``name`` with ``freq``, over 0.6 s."""
    audio = await session.wait_for_audio(identity, timeout_s=15.0, name=name)
    listener = Listener(audio)
    deadline = time.monotonic() + 5.0
    onset = None
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if onset is None:
                onset = listener.capture.first_time_with(freq, after=0.0)
            if onset is not None and time.monotonic() > onset + 0.7:
                break
    finally:
        await listener.aclose()
    if onset is None:
        return 0.0
    windows = [w for t, w in listener.capture.windows() if onset + 0.1 <= t <= onset + 0.6]
    return float(np.mean([tone_level(w, freq) > 0.05 for w in windows])) if windows else 0.0


async def silent(session: RtcSession, identity: str, freq: float) -> bool:
    """True if ``freq`` from ``identity``'s microphone is absent for 0.8 s."""
    try:
        audio = await session.wait_for_audio(identity, timeout_s=2.0, name="microphone")
    except Exception:
        return True
    listener = Listener(audio)
    await asyncio.sleep(0.8)
    await listener.aclose()
    return all(tone_level(w, freq) < 0.02 for _, w in listener.capture.windows())


async def until(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def tone(freq: float) -> tuple[rtc.AudioSource, TonePlayer]:
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    player = TonePlayer(source, freq=freq)
    player.start()
    return source, player


@pytest.mark.parametrize("down_s", [0.0, 2.0])
async def test_a_call_hears_again_after_the_server_restarts(
    server: LocalLiveKitServer, tokens: TokenMinter, room_name: str, down_s: float
) -> None:
    # Down briefly, the SDK's own first attempts may win; down for seconds,
    # its backoff has grown and the sessions rejoin by themselves. Either
    # way the call must come back whole.
    caller_src, caller_tone = tone(CALLER_HZ)
    agent_src, agent_tone = tone(AGENT_HZ)
    hold_src, hold_tone = tone(HOLD_HZ)

    def join(identity: str, role: str = "agent") -> RtcSession:
        token = tokens.mint(role=role, identity=identity, room=room_name).token  # type: ignore[arg-type]
        return RtcSession(url=server.url, token=token)

    caller, agent, watcher = join("caller-1", "caller"), join("agent-1"), join("watcher-1")
    back: dict[str, Reconnected] = {}
    try:
        for s in (caller, agent, watcher):
            await s.connect()

            def note(info: Reconnected, who: str = s.identity) -> None:
                back[who] = info

            s.on("reconnected", note)
        await caller.publish_audio(caller_src)
        await agent.publish_audio(agent_src)

        async def ping(inv: rtc.RpcInvocationData) -> str:
            return f"pong {inv.payload}"

        agent.register_rpc("test.ping", ping)
        await agent.set_attributes({"presence": "busy"})
        # The agent holds the caller: mic held muted, a hold track for the caller alone.
        agent.hold_mic(True)
        agent.restrict_subscribers(["caller-1"])
        await agent.publish_track(hold_src, name=HOLD_TRACK)
        assert await hears(caller, "agent-1", HOLD_HZ, name=HOLD_TRACK) > HEARD
        assert await hears(agent, "caller-1", CALLER_HZ) > HEARD

        await server.restart(kill=True, down_s=down_s)
        ready = time.monotonic()
        await until(lambda: len(back) == 3)
        print(
            f"\ndown {down_s:g} s; back after the server was ready: "
            + ", ".join(
                f"{k} {(time.monotonic() - ready) * 1000:.0f} ms "
                f"({'rejoined' if v.rejoined else 'SDK'}, gap {v.gap_s:.1f} s)"
                for k, v in back.items()
            )
        )

        # Audio both ways again, on new tracks.
        assert await hears(agent, "caller-1", CALLER_HZ) > HEARD
        assert await hears(caller, "agent-1", HOLD_HZ, name=HOLD_TRACK) > HEARD
        # The agent's mic is still held: the caller does not hear it...
        assert agent.muted
        assert await silent(caller, "agent-1", AGENT_HZ)
        # ...and the hold track is still for the caller alone.
        await asyncio.sleep(1.0)
        assert not [a for a in watcher.remote_tracks() if a.name == HOLD_TRACK]
        assert await hears(watcher, "caller-1", CALLER_HZ) > HEARD
        # RPC handlers and attributes are back too.
        answer = await caller.perform_rpc("agent-1", "test.ping", "x", timeout_s=10.0)
        assert answer == "pong x"
        await until(
            lambda: (
                caller.room.remote_participants.get("agent-1") is not None
                and dict(caller.room.remote_participants["agent-1"].attributes).get("presence")
                == "busy"
            ),
            timeout_s=10.0,
        )
        # The hold ends: the caller hears the agent's voice.
        await agent.unpublish_track(HOLD_TRACK)
        agent.restrict_subscribers(None)
        agent.hold_mic(False)
        assert await hears(caller, "agent-1", AGENT_HZ) > HEARD
        assert await hears(watcher, "agent-1", AGENT_HZ) > HEARD
    finally:
        for s in (caller, agent, watcher):
            await s.aclose()
        for t in (caller_tone, agent_tone, hold_tone):
            await t.aclose()


async def _play(source: rtc.AudioSource, samples: np.ndarray) -> None:
    """Push 48 kHz samples into ``source`` in real time, 10 ms per frame."""
    n = SAMPLE_RATE // 100
    start = time.monotonic()
    for k, i in enumerate(range(0, len(samples) - n + 1, n)):
        await source.capture_frame(rtc.AudioFrame(samples[i : i + n].tobytes(), SAMPLE_RATE, 1, n))
        ahead = start + (k + 1) * 0.01 - time.monotonic() - 0.03
        if ahead > 0:
            await asyncio.sleep(ahead)


SAID = "I would like to book an appointment for next Tuesday morning please."


async def test_recording_and_transcript_go_on_with_the_gap_marked(
    server: LocalLiveKitServer, tokens: TokenMinter, room_name: str, tmp_path: Path
) -> None:
    speech = render_turn(SAID, "en-us+m1")
    settings = Settings(home=tmp_path, identity="agent-2", live_transcript=True)
    settings.ensure_dirs()
    source, caller_tone = tone(CALLER_HZ)
    caller = RtcSession(
        url=server.url,
        token=tokens.mint(role="caller", identity="caller-2", room=room_name).token,
    )
    gaps: list[MediaGap] = []
    segments: list[TranscriptSegment] = []
    async with HistoryStore(tmp_path / "history.sqlite3") as history:
        context = AppContext(settings=settings, url=server.url, history=history)
        calls = CallController(context=context, role="agent")
        agent = AgentController(calls=calls)
        agent.events.on("media_gap", gaps.append)
        agent.events.on("segment", segments.append)
        try:
            await caller.connect()
            await caller.publish_audio(source)
            token = tokens.mint(role="agent", identity="agent-2", room=room_name).token
            await calls.join(room_name, token=token)
            await until(lambda: agent.recorder is not None and agent.live is not None, 60.0)
            call_id = calls.call_id
            assert call_id is not None and agent.recorder is not None
            await asyncio.sleep(1.5)  # the caller's tone is recorded

            await server.restart(kill=True, down_s=1.0)
            await until(lambda: gaps)
            await caller_tone.aclose()  # the tone stops; the caller speaks
            await asyncio.sleep(0.5)
            await _play(source, speech)
            # Whisper may also write the tone before the restart as a segment ("Beep!"):
            # wait for the caller's words after the gap.
            await until(lambda: _said_after(segments, gaps[0]), 60.0)
            files = dict(agent.recorder.files)
            await agent.aclose()
            await calls.aclose()
            detail = await history.get_call(call_id)
        finally:
            await caller.aclose()
            await caller_tone.aclose()

    gap = gaps[0]
    assert gap.leg == "call" and gap.end_s > gap.start_s
    # The transcript goes on after the gap, and the gap is marked in it.
    said = _said_after(segments, gap)
    assert {"appointment", "tuesday"} & set(
        " ".join(s.text for s in said).lower().replace(".", "").split()
    )
    markers = [s for s in detail.segments if s.speaker == GAP_SPEAKER]
    assert len(markers) == 1 and "connection lost" in markers[0].text
    assert markers[0].start_s == pytest.approx(gap.start_s, abs=0.01)
    assert any(s.speaker == "caller-2" for s in detail.segments)
    # The recording goes on in the same file: the tone, the gap as silence, the speech.
    samples, rate = read_wav(files["caller-2"])
    level = [
        float(np.abs(samples[i : i + rate // 10]).mean())
        for i in range(0, len(samples) - rate // 10, rate // 10)
    ]
    toned = [
        tone_level(samples[i : i + 480].astype(np.float64) / 32768, CALLER_HZ) > 0.05
        for i in range(0, len(samples) - 480, 480)
    ]
    first_quiet = next(i for i, v in enumerate(level) if i > 5 and v < 30)
    assert any(toned[: first_quiet * 10]), "the tone before the restart is in the file"
    assert max(level[first_quiet:]) > 300, "the speech after the restart is in the file"


def _said_after(segments: list[TranscriptSegment], gap: MediaGap) -> list[TranscriptSegment]:
    """The caller's final words that begin after the gap began."""
    return [
        s
        for s in segments
        if s.final and s.speaker == "caller-2" and s.text and s.start_s >= gap.start_s
    ]
