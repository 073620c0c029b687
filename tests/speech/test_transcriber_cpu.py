"""What saves the live transcriber's CPU: no recognition in silence, short encoder windows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from softphone.domain.transcript import TranscriptSegment
from softphone.speech.live_transcriber import LiveTranscriber, to_16k
from softphone.speech.whisper_engine import WhisperEngine, looks_repetitive
from tests.speech.corpus import SAMPLE_RATE, RenderedCall, normalize, wer

pytestmark = pytest.mark.integration


async def feed(live: LiveTranscriber, tracks: dict[str, np.ndarray], *, step: int = 4800) -> None:
    """Feed every track in 100 ms steps, as fast as the loop allows."""
    n = len(next(iter(tracks.values())))
    for i in range(0, n, step):
        for ident, track in tracks.items():
            live.feed(ident, track[i : i + step], sample_rate=SAMPLE_RATE)
        await asyncio.sleep(0)


async def test_silence_and_faint_noise_cost_no_recognition(whisper_engine: WhisperEngine) -> None:
    rng = np.random.default_rng(7)
    seconds = 20 * SAMPLE_RATE
    hiss = (rng.normal(0, 10 ** (-60 / 20), seconds) * 32767).astype(np.int16)  # -60 dBFS
    hum = (0.003 * 32767 * np.sin(2 * np.pi * 50 * np.arange(seconds) / SAMPLE_RATE)).astype(
        np.int16
    )
    tracks = {"caller": np.zeros(seconds, np.int16), "agent": hiss, "third": hum}
    before = whisper_engine.stats.decodes
    segments: list[TranscriptSegment] = []
    live = LiveTranscriber(engine=whisper_engine, clock=lambda: 0.0, call_started_at=0.0)
    async with live:
        live.on("segment", segments.append)
        await feed(live, tracks)
        await live.flush()
    assert live.stats.recognitions == 0 and live.stats.utterances == 0
    assert segments == []
    assert whisper_engine.stats.decodes == before


async def test_live_utterances_are_encoded_in_short_windows(
    whisper_engine: WhisperEngine, rendered_calls: dict[str, RenderedCall]
) -> None:
    rc = rendered_calls["02_password_reset"]
    before = whisper_engine.stats
    finals: list[TranscriptSegment] = []
    live = LiveTranscriber(engine=whisper_engine, clock=lambda: 0.0, call_started_at=0.0)
    async with live:
        live.on("segment", lambda s: finals.append(s) if s.final else None)
        await feed(live, rc.tracks)
        await live.flush()
    after = whisper_engine.stats
    stats = live.stats
    assert stats.utterances == len(rc.utterances) == len(finals)
    assert stats.finals >= stats.utterances
    decodes = after.decodes - before.decodes
    assert decodes >= stats.recognitions
    # Each utterance is encoded with a few seconds of padding, not a 30 s
    # window; the full window is only a fallback for a runaway decode.
    assert after.full_window_decodes - before.full_window_decodes <= decodes // 5
    text = " ".join(s.text for s in finals)
    assert wer(" ".join(u.text for u in rc.utterances), text) < 0.25, text


async def test_a_short_window_hears_what_the_full_window_hears(
    whisper_engine: WhisperEngine, rendered_calls: dict[str, RenderedCall]
) -> None:
    rc = rendered_calls["07_appointment"]
    errors_short = errors_full = words = 0.0
    for utt in rc.utterances[:6]:
        track = rc.tracks[utt.identity]
        cut = track[int((utt.start_s - 0.2) * SAMPLE_RATE) : int((utt.end_s + 0.3) * SAMPLE_RATE)]
        audio = to_16k(cut, SAMPLE_RATE)
        full_before = whisper_engine.stats.full_window_decodes
        short = await asyncio.to_thread(whisper_engine.transcribe_utterance, audio, beam_size=5)
        assert whisper_engine.stats.full_window_decodes == full_before
        pieces, _ = await asyncio.to_thread(whisper_engine.transcribe, audio, beam_size=5)
        full = " ".join(p.text for p in pieces)
        n = len(normalize(utt.text))
        errors_short += wer(utt.text, short) * n
        errors_full += wer(utt.text, full) * n
        words += n
    assert errors_short / words <= errors_full / words + 0.05
    assert errors_short / words < 0.2


async def test_silent_audio_gives_no_text(whisper_engine: WhisperEngine) -> None:
    assert await asyncio.to_thread(whisper_engine.transcribe_utterance, np.zeros(16000)) == ""
    assert await asyncio.to_thread(whisper_engine.transcribe_utterance, np.zeros(0)) == ""


@pytest.mark.parametrize(
    ("text", "runaway"),
    [
        ("I'm 3, 4, 0, 8, 1, 1, 1, 1, 1", True),
        ("That works for me. " * 6, True),
        ("one two one two one two one two", True),
        ("No, no, no, that is fine.", False),
        ("Hi, this is Maria Lopez. I was charged twice for order 58213.", False),
    ],
)
def test_runaway_repetitions_are_recognised(text: str, runaway: bool) -> None:
    assert looks_repetitive(text) is runaway
