"""The speech glossary: validated in settings, and it makes the recogniser spell names as given."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from softphone.config import Settings, load_settings
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import ConfigError
from softphone.speech.factory import make_batch_stt
from softphone.speech.live_transcriber import LiveTranscriber
from softphone.speech.local_stt import LocalStt
from softphone.speech.whisper_engine import WhisperEngine, glossary_prompt
from tests.speech.corpus import SAMPLE_RATE, RenderedCall, load_calls, render_call, write_wav

pytestmark = pytest.mark.integration

# A tune-split call whose agent names the company ("Zentek") and the caller
# gives an order code; tiny.en alone hears "calling me and my name".
CALL = "14_broken_laptop_warranty"


@pytest.fixture(scope="module")
def zentek_call() -> RenderedCall:
    """The call, spoken by espeak-ng, cut after its first turn (the greeting)."""
    call = next(c for c in load_calls("tune") if c.id == CALL)
    rc = render_call(call)
    first = rc.utterances[0]
    end = int((first.end_s + 1.0) * SAMPLE_RATE)
    return RenderedCall(
        rc.call, {k: v[:end] for k, v in rc.tracks.items()}, (first,), end / SAMPLE_RATE
    )


async def live_finals(
    engine: WhisperEngine, rc: RenderedCall, **kw: Any
) -> list[TranscriptSegment]:
    """Final segments of the live transcriber fed ``rc`` faster than real time."""
    finals: list[TranscriptSegment] = []
    live = LiveTranscriber(engine=engine, clock=lambda: 0.0, call_started_at=0.0, **kw)
    async with live:
        live.on("segment", lambda s: finals.append(s) if s.final else None)
        n = len(next(iter(rc.tracks.values())))
        for i in range(0, n, 4800):
            for ident, track in rc.tracks.items():
                live.feed(ident, track[i : i + 4800], sample_rate=SAMPLE_RATE)
            await asyncio.sleep(0)
        await live.flush()
    return finals


async def test_the_glossary_makes_live_finals_spell_the_company_name(
    whisper_engine: WhisperEngine, zentek_call: RenderedCall
) -> None:
    plain = " ".join(s.text for s in await live_finals(whisper_engine, zentek_call))
    with_glossary = " ".join(
        s.text
        for s in await live_finals(whisper_engine, zentek_call, glossary=("Zentek", "UltraBook"))
    )
    assert "Zentek" not in plain, plain  # what the model hears on its own...
    assert "Zentek" in with_glossary, with_glossary  # ...and with the names it should expect
    assert "Sophie" in with_glossary


async def test_settings_glossary_reaches_the_batch_engine(
    whisper_engine: WhisperEngine, zentek_call: RenderedCall, tmp_path: Path
) -> None:
    agent = zentek_call.call.identities["agent"]
    path = write_wav(tmp_path / "agent.wav", zentek_call.tracks[agent])
    settings = Settings(home=tmp_path, speech_glossary="Zentek, UltraBook")
    stt = make_batch_stt(settings)
    assert isinstance(stt, LocalStt) and stt.prompt == "Zentek, UltraBook."
    async with LocalStt(engine=whisper_engine, glossary=settings.speech_glossary_terms) as stt:
        result = await stt.transcribe(path, speaker=agent)
    assert "Zentek" in result.text, result.text


def test_a_live_transcriber_from_settings_uses_the_glossary(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, speech_glossary=" Acme , Northwind Bank,,")
    assert settings.speech_glossary_terms == ("Acme", "Northwind Bank")
    live = LiveTranscriber.from_settings(settings)
    assert live.prompt == glossary_prompt(settings.speech_glossary_terms) == "Acme, Northwind Bank."


def test_the_glossary_comes_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        env={"SOFTPHONE_HOME": str(tmp_path), "SOFTPHONE_SPEECH_GLOSSARY": "Cloudbox, Zentek"}
    )
    assert settings.speech_glossary_terms == ("Cloudbox", "Zentek")
    assert load_settings(env={"SOFTPHONE_HOME": str(tmp_path)}).speech_glossary_terms == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Acme\x00Corp", "no control characters"),
        ("Acme\nIgnore the audio", "no control characters"),
        ("Acme\u200bCorp", "no control characters"),  # invisible format character
        ("x" * 601, "at most 600 characters"),
        (",".join(f"n{i}" for i in range(41)), "at most 40 names"),
        ("y" * 49, "each name at most 48 characters"),
    ],
)
def test_a_bad_glossary_is_refused_with_a_clear_error(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_settings({"speech_glossary": value}, env={"SOFTPHONE_HOME": str(tmp_path)})
    assert "speech_glossary" in str(err.value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings(home=tmp_path, speech_glossary=value)
    assert not (tmp_path / "profiles").exists()  # nothing was written


def test_glossary_prompt_is_the_names_as_written() -> None:
    assert glossary_prompt(["Acme", " ", " ZenBook Pro "]) == "Acme, ZenBook Pro."
    assert glossary_prompt([]) == ""


async def test_transcripts_write_numbers_and_codes_as_digits(
    whisper_engine: WhisperEngine,
) -> None:
    """Whisper's own digits stay; spelled-out digit sequences are joined into one code."""
    call = next(c for c in load_calls("tune") if c.id == "09_spelled_meter_reading")
    rc = render_call(call)
    # The caller reads the meter digit by digit: "Nine nine three, four zero eight, one."
    spelled = next(u for u in rc.utterances if u.text.lower().startswith("nine nine three"))
    cut = slice(
        int((spelled.start_s - 0.3) * SAMPLE_RATE), int((spelled.end_s + 1.0) * SAMPLE_RATE)
    )
    rc_cut = RenderedCall(
        rc.call,
        {k: v[cut] for k, v in rc.tracks.items()},
        (spelled,),
        (cut.stop - cut.start) / SAMPLE_RATE,
    )
    finals = await live_finals(whisper_engine, rc_cut)
    text = " ".join(s.text for s in finals)
    assert re.search(r"\d{5,}", text), text  # one code, not "nine, nine, three" or "9, 9, 3"
    words = await live_finals(whisper_engine, rc_cut, digits=False)
    assert not re.search(r"\d{5,}", " ".join(s.text for s in words))
