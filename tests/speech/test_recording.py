"""Per-participant recording: incremental WAV files, crash safety, reconnects through the real server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from softphone.errors import MediaError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.recording import (
    CallRecorder,
    WavWriter,
    repair_directory,
    repair_wav,
    writer_pool,
)
from softphone.media.session import RemoteAudio, RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from softphone.store.history import HistoryStore
from tests.audio_probe import tone_level
from tests.speech.corpus import ROOT, read_wav

pytestmark = pytest.mark.integration


def wav_frames(path: Path) -> int:
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


def test_wav_is_valid_after_every_write_and_appends_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    w = WavWriter(path, sample_rate=16000)
    for k in range(1, 4):
        w.write(np.full(1600, k, np.int16).tobytes())
        assert wav_frames(path) == 1600 * k  # readable mid-call, header matches
    w.close()
    again = WavWriter(path, sample_rate=16000)
    again.write(np.full(800, 9, np.int16).tobytes())
    again.close()
    samples, rate = read_wav(path)
    assert rate == 16000 and len(samples) == 5600
    assert samples[0] == 1 and samples[-1] == 9


def test_a_stale_header_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "call" / "x.wav"
    w = WavWriter(path, sample_rate=16000)
    w.write(np.ones(1000, np.int16).tobytes())
    w.close()
    with path.open("ab") as f:  # audio that reached the disk after the last header update
        f.write(np.ones(501, np.int16).tobytes() + b"\x01")
    assert wav_frames(path) == 1000
    assert repair_directory(tmp_path / "rec") == [path]
    assert wav_frames(path) == 1501
    assert not repair_wav(path)  # already consistent
    (tmp_path / "rec" / "notes.wav").write_bytes(b"not a wav file at all, longer than 44 bytes....")
    assert repair_directory(tmp_path / "rec") == []


def test_a_killed_process_leaves_a_valid_file_missing_at_most_a_second(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from pathlib import Path
        import numpy as np
        from softphone.media.recording import CallRecorder

        async def main():
            rec = CallRecorder(directory=Path(sys.argv[1]), call_id="c1")
            await rec.start()
            await rec.open_track("caller-1", align=False)
            t0 = time.monotonic()
            k = 0
            while True:
                rec.feed("caller-1", np.full(480, 1000, np.int16))
                k += 1
                if k == 200:  # two seconds of audio handed over
                    print("fed", flush=True)
                await asyncio.sleep(max(0.0, t0 + k * 0.01 - time.monotonic()))

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "fed"
        time.sleep(0.5)
        fed_s = 2.0 + 0.5
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    path = tmp_path / "c1" / "call-caller-1.wav"
    samples, rate = read_wav(path)  # a valid WAV without any repair
    assert rate == SAMPLE_RATE
    assert fed_s - 1.0 <= len(samples) / rate <= fed_s + 0.5
    assert np.all(samples == 1000)


def _recorder_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("recorder")}


async def test_recorders_write_on_one_thread_that_was_running_before_the_calls(
    tmp_path: Path,
) -> None:
    # An agent window starts it when built; a call starting a thread held its loop.
    writer_pool()
    running = _recorder_threads()
    assert len(running) == 1
    for call_id in ("c1", "c2"):
        async with CallRecorder(directory=tmp_path, call_id=call_id) as rec:
            await rec.open_track("caller-1", align=False)
            assert _recorder_threads() == running
        assert (tmp_path / call_id / "call-caller-1.wav").exists()
    assert _recorder_threads() == running  # kept for the next call


async def test_recorder_refuses_a_bad_call_id(tmp_path: Path) -> None:
    with pytest.raises(MediaError):
        CallRecorder(directory=tmp_path, call_id="../escape")


async def test_recording_survives_a_reconnect(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str, tmp_path: Path
) -> None:
    """The caller leaves and rejoins; the agent's recording continues in the same file."""
    agent_token = minter.mint(role="agent", identity="agent-r", room=room_name)
    async with (
        HistoryStore(tmp_path / "history.sqlite3") as store,
        RtcSession(url=livekit_server.url, token=agent_token.token) as agent,
    ):
        call_id = await store.start_call(room_name)
        async with CallRecorder(directory=tmp_path / "rec", call_id=call_id, history=store) as rec:
            agent.on("remote_audio", lambda audio: rec.add_remote(audio))
            # The file starts with the first audio (not with the caller's
            # connect, which takes seconds on a loaded machine).
            started: float | None = None
            for freq in (440.0, 880.0):  # first connection, then the reconnect
                token = minter.mint(role="caller", identity="caller-r", room=room_name)
                async with RtcSession(url=livekit_server.url, token=token.token) as caller:
                    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
                    await caller.publish_audio(source)
                    tone = TonePlayer(source, freq=freq)
                    tone.start()
                    audio: RemoteAudio = await agent.wait_for_audio("caller-r")
                    assert audio.identity == "caller-r"
                    if started is None:
                        started = time.monotonic()
                    await asyncio.sleep(1.5)
                    await tone.aclose()
                await asyncio.sleep(0.7)  # gone for a moment
            assert started is not None
            wall_s = time.monotonic() - started
            files = rec.files
        detail = await store.get_call(call_id)

    assert list(files) == ["caller-r"]
    assert [r.speaker for r in detail.recordings] == ["caller-r"]  # one file, registered once
    samples, rate = read_wav(files["caller-r"])
    x = samples.astype(np.float32) / 32768
    # The file spans the whole call, the gap filled with silence.
    assert len(x) / rate == pytest.approx(wall_s, abs=1.0)
    half = len(x) // 2
    windows = [x[i : i + 480] for i in range(0, len(x) - 480, 480)]
    first = max(tone_level(w, 440.0) for w in windows[: half // 480])
    second = max(tone_level(w, 880.0) for w in windows[half // 480 :])
    assert first > 0.1 and second > 0.1
