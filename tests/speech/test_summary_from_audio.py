"""A noisy call, spoken, recognised by the bundled model and summarized: facts survive recognition.

The reference-transcript tests (``test_offline_summarizer.py``) cover the
whole corpus; this one renders a single tuning-split call with seeded noise,
so the digits, names and codes come through faster-whisper's spelling.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from softphone.domain.summary import SpeakerRoles
from softphone.speech.local_stt import LocalStt
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.whisper_engine import WhisperEngine
from tests.speech.corpus import Call, fact_recall, render_call, write_wav

pytestmark = pytest.mark.integration

CALL = "16_noisy_gas_smell"


async def test_noisy_call_summarized_from_its_recognised_audio(
    corpus: list[Call], whisper_engine: WhisperEngine, tmp_path: Path
) -> None:
    call = next(c for c in corpus if c.id == CALL)
    assert call.noise is not None
    rendered = render_call(call)
    segments = []
    async with LocalStt(engine=whisper_engine) as stt:
        for ident, track in rendered.tracks.items():
            path = write_wav(tmp_path / f"{ident}.wav", track)
            segments += (await stt.transcribe(path, speaker=ident)).segments
    roles = SpeakerRoles(caller=call.caller_identity, agents=frozenset({call.agent_identity}))
    card = await OfflineSummarizer(timeout_s=120.0).summarize(segments, roles=roles)
    # tiny.en mangles much of a noisy call ("12 blowing street"); the name, the
    # town and the promise come through.
    assert fact_recall(call.facts, card.to_text()) >= 0.5, card.to_text()
    assert "Caller: Harold McKay" in card.caller_facts, card.to_text()
    assert call.agent_name and not any(call.agent_name in f for f in card.key_facts)
