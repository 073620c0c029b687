"""Fixtures of the speech tests: the loaded model, the rendered corpus, local provider servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from softphone.config import Settings
from softphone.speech.whisper_engine import WhisperEngine, shared_engine
from tests.providers.assemblyai_api import FakeAssemblyAI, assemblyai_server
from tests.providers.openai_api import FakeOpenAI, openai_server
from tests.speech.corpus import Call, RenderedCall, load_calls, render_call, write_wav

# Calls whose audio the tests run through whisper (the benchmark runs all of them).
TEST_CALLS = ("02_password_reset", "07_appointment")


@pytest.fixture(scope="session")
def corpus() -> list[Call]:
    """Every scripted call."""
    return load_calls()


@pytest.fixture(scope="session")
def whisper_engine() -> WhisperEngine:
    """The bundled tiny.en model, loaded once per test session."""
    return shared_engine(model="tiny.en", device="cpu", compute_type="int8")


@pytest.fixture(scope="session")
def rendered_calls(corpus: list[Call]) -> dict[str, RenderedCall]:
    """The test calls spoken by espeak-ng (cached on disk across runs)."""
    return {c.id: render_call(c) for c in corpus if c.id in TEST_CALLS}


@pytest.fixture(scope="session")
def call_wavs(
    rendered_calls: dict[str, RenderedCall], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Path]]:
    """Per-speaker WAV files of the test calls: ``{call_id: {identity: path}}``."""
    root = tmp_path_factory.mktemp("calls")
    return {
        cid: {
            ident: write_wav(root / cid / f"{ident.replace(':', '_')}.wav", track)
            for ident, track in rc.tracks.items()
        }
        for cid, rc in rendered_calls.items()
    }


@pytest.fixture(scope="session")
def _openai_session() -> Iterator[FakeOpenAI]:
    with openai_server(api_key="sk-test-secret-123") as fake:
        yield fake


@pytest.fixture
def openai_api(_openai_session: FakeOpenAI) -> FakeOpenAI:
    """The local OpenAI-compatible server, reset to answer ``ok``."""
    fake = _openai_session
    fake.script()
    fake.requests.clear()
    fake.card = {
        "reason": "The caller was charged twice for order 58213.",
        "key_facts": ["Name: Maria Lopez", "Order: 58213"],
        "actions_taken": ["Refunded the duplicate charge."],
        "open_items": [],
        "sentiment": "negative",
        "next_step": "Confirm the refund arrived.",
    }
    fake.slow_s = 1.0
    fake.retry_after_s = 1
    return fake


@pytest.fixture(scope="session")
def _assemblyai_session() -> Iterator[FakeAssemblyAI]:
    with assemblyai_server(api_key="aai-test-secret-456") as fake:
        yield fake


@pytest.fixture
def assemblyai_api(_assemblyai_session: FakeAssemblyAI) -> FakeAssemblyAI:
    """The local AssemblyAI-compatible server, reset to answer ``ok``."""
    fake = _assemblyai_session
    for e in ("upload", "transcript", "poll"):
        fake.script(e)
    fake.hits = dict.fromkeys(fake.hits, 0)
    fake.upload_chunks.clear()
    fake.polls_until_done = 2
    fake.retry_after_s = 1
    return fake


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings in a throw-away profile home."""
    return Settings(home=tmp_path)
