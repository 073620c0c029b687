"""Batch transcription on this machine with faster-whisper (no network)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

from softphone.domain.transcript import TranscriptSegment
from softphone.speech.facts import spoken_to_digits
from softphone.speech.stt import BatchStt, Transcript
from softphone.speech.whisper_engine import (
    BUNDLED,
    WhisperEngine,
    glossary_prompt,
    shared_engine,
)


class LocalStt(BatchStt):
    """faster-whisper over a whole file, in a worker thread.

    Args:
        model: Model name or path (``tiny.en`` = bundled, no download).
        device: ``cpu``, ``cuda`` or ``auto``.
        compute_type: e.g. ``int8``.
        beam_size: Beam width (1 is greedy and fastest).
        timeout_s: How long one transcription may take.
        engine: An already loaded engine to share (e.g. with live transcription).
        glossary: Company and product names the model should expect (spelled as given).
        digits: Write spoken numbers and spelled-out codes as digits (text2num).
    """

    name = "local"

    def __init__(
        self,
        *,
        model: str = BUNDLED,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 5,
        timeout_s: float = 600.0,
        engine: WhisperEngine | None = None,
        glossary: Sequence[str] = (),
        digits: bool = True,
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        self._load = functools.partial(
            shared_engine, model=model, device=device, compute_type=compute_type
        )
        self.beam_size = beam_size
        self._engine = engine
        self.prompt = glossary_prompt(glossary)
        self.digits = digits

    async def _transcribe_impl(
        self, path: Path, speaker: str, speaker_map: dict[str, str], leg: str
    ) -> Transcript:
        def run() -> Transcript:
            engine = self._engine or self._load()
            self._engine = engine
            pieces, duration = engine.transcribe(
                str(path), beam_size=self.beam_size, vad=True, prompt=self.prompt
            )
            segs = tuple(
                TranscriptSegment(
                    speaker=speaker,
                    start_s=p.start_s,
                    end_s=p.end_s,
                    text=spoken_to_digits(p.text) if self.digits else p.text,
                    leg=leg,
                    segment_id=f"{speaker}-{i}",
                )
                for i, p in enumerate(pieces)
            )
            return Transcript(segs, self.name, duration)

        return await asyncio.to_thread(run)
