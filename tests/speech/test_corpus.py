"""The scripted corpus itself: its format, its splits, voices, speeds and seeded noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.speech.corpus import (
    CALLS_DIR,
    SAMPLE_RATE,
    SPLITS,
    Call,
    Noise,
    Turn,
    _parse_call,
    load_calls,
    render_call,
    render_turn,
)

pytestmark = pytest.mark.unit


def test_every_call_is_well_formed(corpus: list[Call]) -> None:
    assert [p.stem for p in sorted(CALLS_DIR.glob("*.json"))] == [c.id for c in corpus]
    for call in corpus:
        assert call.split in SPLITS
        assert set(call.identities) == {"caller", "agent"}
        assert call.facts and all(f.strip() for f in call.facts), call.id
        assert call.sentiment in ("positive", "neutral", "negative", "unknown"), call.id
        assert any(t.role == "agent" for t in call.turns), call.id
        assert all(100 <= t.speed <= 220 for t in call.turns), call.id


def test_the_corpus_is_varied(corpus: list[Call]) -> None:
    heldout = load_calls("heldout")
    assert len(heldout) >= 12 and len(load_calls("tune")) + len(heldout) == len(corpus)
    voices = {t.voice for c in corpus for t in c.turns}
    speeds = {t.speed for c in corpus for t in c.turns}
    assert len(voices) >= 6 and len(speeds) >= 4
    assert sum(c.noise is not None for c in corpus) >= 4
    assert sum(c.noise is not None for c in heldout) >= 2
    # one-sided calls (only the agent speaks), very short and long ones
    assert any(all(t.role == "agent" for t in c.turns) for c in heldout)
    assert min(len(c.turns) for c in heldout) <= 4
    assert max(len(c.turns) for c in heldout) >= 20


def test_bad_call_files_are_refused(tmp_path: Path) -> None:
    good = json.loads((CALLS_DIR / "01_double_charge.json").read_text())
    for bad in (
        {**good, "split": "train"},
        {**good, "noise": {"kind": "pink", "snr_db": 10, "seed": 1}},
        {**good, "speakers": {"caller": good["speakers"]["caller"]}},
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            _parse_call(path)
    with pytest.raises(ValueError):
        load_calls("train")


def test_every_voice_of_the_corpus_speaks(corpus: list[Call]) -> None:
    for voice in sorted({t.voice for c in corpus for t in c.turns}):
        audio = render_turn("Hello there.", voice)
        assert len(audio) > SAMPLE_RATE // 4, voice


def test_speed_and_seeded_noise_are_rendered() -> None:
    text = "My account number is four eight one nine."
    slow, fast = render_turn(text, "en-us+m1", 120), render_turn(text, "en-us+m1", 190)
    assert len(slow) > 1.3 * len(fast)

    def call(noise: Noise | None) -> Call:
        return Call(
            id="noise-check",
            identities={"caller": "caller-x", "agent": "agent-y"},
            turns=(
                Turn("agent", "agent-y", "en-us+m1", "How can I help?", 150),
                Turn("caller", "caller-x", "en-gb+m3", text, 170),
            ),
            facts=("4819",),
            sentiment="neutral",
            noise=noise,
        )

    clean = render_call(call(None))
    noisy = render_call(call(Noise("brown", 15.0, 3)))
    again = render_call(call(Noise("brown", 15.0, 3)))
    for ident in clean.tracks:
        assert np.array_equal(noisy.tracks[ident], again.tracks[ident]), "seeded"
    caller = noisy.tracks["caller-x"].astype(np.float64)
    speech = clean.tracks["caller-x"].astype(np.float64)
    voiced = speech != 0
    noise = caller - speech
    snr = 10 * np.log10(np.mean(speech[voiced] ** 2) / np.mean(noise**2))
    assert 12.0 < snr < 18.0
    assert np.abs(caller[: SAMPLE_RATE // 2]).max() > 0, "noise in the pauses too"
