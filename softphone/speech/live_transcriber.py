"""Live transcription: each speaker's audio in, transcript segments out as the call goes on.

Audio arrives per speaker (a remote participant's track, or the local mic's
frames); speaker attribution comes from the track, not from diarization. A
small energy-based voice-activity detector with an adaptive noise floor (which
follows steady noise up even while someone talks) cuts
each speaker's audio into utterances: one ends after ``silence_s`` of quiet
or at ``max_utterance_s``. Each utterance goes to faster-whisper in one worker
thread (never the event loop or the UI thread) and comes back as a final
:class:`TranscriptSegment`, emitted as a ``segment`` event and persisted with
:meth:`HistoryStore.add_segment` when a store is given. While someone talks,
partial segments (``final=False``, same ``segment_id``) are emitted when the
worker is idle; the final one replaces them.

CPU: every recognition costs about the same whatever the utterance's length
(the encoder's window), so the cost is the number of recognitions. Nothing is
decoded while nobody speaks (the VAD gates the model); each utterance is
encoded with only a few seconds of padding, not Whisper's 30 s window
(:meth:`WhisperEngine.transcribe_utterance`); partials are greedy and only
made while recognition is cheap, finals use beam search. :attr:`stats`
counts what was done. Measurements: ``docs/notes-transcriber.md``.

A glossary (company and product names, the ``speech_glossary`` setting) is
given to the model as the text before each utterance, so it spells those
names as written. Numbers come out as digits: Whisper writes most of them
so, and what it spells out ("nine nine three, four zero") goes through
:func:`softphone.speech.facts.spoken_to_digits` (text2num), as the cards do.

A failure of the speech engine never stops the call: it is emitted as an
``error`` event and the next utterance is tried again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import numpy as np

from softphone.config import Settings
from softphone.domain.events import EventEmitter
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import SoftphoneError, SpeechError
from softphone.media.session import RemoteAudio
from softphone.speech.facts import spoken_to_digits
from softphone.speech.whisper_engine import (
    SAMPLE_RATE,
    WhisperEngine,
    glossary_prompt,
    shared_engine,
)
from softphone.store.history import HistoryStore

log = logging.getLogger(__name__)

LiveEvent = Literal["segment", "error"]

FRAME = SAMPLE_RATE * 30 // 1000  # VAD frame: 30 ms at 16 kHz
PRE_ROLL_FRAMES = 7  # ~200 ms kept before speech starts, so first syllables survive
MIN_THRESHOLD = 10 ** (-45 / 20)  # never call anything below -45 dBFS speech
FLOOR_MARGIN = 10 ** (12 / 20)  # speech is at least 12 dB above the noise floor
# The quietest frame of the last 3 s is noise, even while someone talks (words
# have gaps): the floor follows it up, so steady noise never holds an utterance
# open until max_utterance_s ("minimum statistics" noise estimation).
FLOOR_WINDOW_FRAMES = 100


def to_16k(samples: np.ndarray[Any, Any], sample_rate: int) -> np.ndarray[Any, Any]:
    """Mono float32 samples in [-1, 1] at 16 kHz, from int16 or float input at any rate."""
    x = samples.astype(np.float32)
    if samples.dtype == np.int16:
        x /= 32768.0
    if sample_rate == SAMPLE_RATE:
        return x
    if sample_rate % SAMPLE_RATE == 0:  # 48 kHz: average groups of 3 (a simple low-pass)
        k = sample_rate // SAMPLE_RATE
        n = len(x) // k * k
        averaged: np.ndarray[Any, Any] = x[:n].reshape(-1, k).mean(axis=1)
        return averaged
    n_out = round(len(x) * SAMPLE_RATE / sample_rate)
    resampled: np.ndarray[Any, Any] = np.interp(
        np.linspace(0, len(x) - 1, n_out), np.arange(len(x)), x
    ).astype(np.float32)
    return resampled


@dataclasses.dataclass(frozen=True)
class LiveStats:
    """What a live transcriber has done (for benchmarks, tests and diagnostics).

    Attributes:
        partials: Recognitions of an utterance still in progress.
        finals: Recognitions of a finished utterance (speculative ones included).
        speculative_wasted: Speculative finals whose speaker went on talking
            (shown as partials; the utterance is recognised again at its end).
        utterances: Utterances the VAD cut (each gets one final segment).
        busy_s: Wall-clock seconds the model spent on this transcriber's audio.
    """

    partials: int = 0
    finals: int = 0
    speculative_wasted: int = 0
    utterances: int = 0
    busy_s: float = 0.0

    @property
    def recognitions(self) -> int:
        """Model runs in all (partials and finals)."""
        return self.partials + self.finals


@dataclasses.dataclass
class _Speaker:
    """VAD and timing state of one speaker on one leg."""

    speaker: str
    leg: str
    origin_s: float  # call time of this stream's first sample
    samples: int = 0  # samples seen in this stream (16 kHz)
    rest: np.ndarray[Any, Any] = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
    floor: float = MIN_THRESHOLD / FLOOR_MARGIN
    in_speech: bool = False
    voiced_run: int = 0
    silent_run: int = 0
    pre_roll: list[np.ndarray[Any, Any]] = dataclasses.field(default_factory=list)
    recent_rms: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=FLOOR_WINDOW_FRAMES)
    )
    utterance: list[np.ndarray[Any, Any]] = dataclasses.field(default_factory=list)
    utt_start_s: float = 0.0
    last_voiced_end_s: float = 0.0
    voiced_frames: int = 0
    utt_frames: int = 0
    frames_at_partial: int = 0
    counter: int = 0
    segment_id: str = ""
    spec_token: int = 0  # the speculative final running for this pause (0: none)


@dataclasses.dataclass(frozen=True)
class _Job:
    state_key: tuple[str, str]
    segment_id: str
    speaker: str
    leg: str
    start_s: float
    end_s: float
    audio: np.ndarray[Any, Any]
    kind: Literal["partial", "final", "spec"]
    token: int = 0

    @property
    def final(self) -> bool:
        return self.kind != "partial"


class LiveTranscriber(EventEmitter[LiveEvent]):
    """Turns each speaker's audio into transcript segments while the call goes on.

    Use as ``async with LiveTranscriber(...) as live:``; then
    :meth:`add_remote` for each remote track and :meth:`feed` for local mic
    frames. Listen with ``live.on("segment", fn)`` (payload:
    :class:`TranscriptSegment`, ``final`` False for partials) and
    ``live.on("error", fn)`` (payload: :class:`SpeechError`).

    Args:
        engine: A loaded engine; if None, the shared one for ``model``/``device``/
            ``compute_type`` is loaded in a worker thread at :meth:`start`.
        model: Model name or path (``tiny.en`` = bundled, no download).
        device: faster-whisper device.
        compute_type: faster-whisper compute type.
        history: Where final segments are persisted (with ``call_id``).
        call_id: The call the segments belong to in the history.
        call_started_at: ``clock()`` value at which the call began (default: now).
        clock: Monotonic clock, seconds.
        silence_s: Quiet that ends an utterance.
        max_utterance_s: Longest utterance before it is cut.
        min_speech_s: Shorter bursts are ignored (clicks, noise).
        partials: Emit partial segments while someone talks.
        partial_interval_s: Audio between two early recognitions of one
            utterance (partials, or a final started at a pause that may not
            be the end); each is a whole recognition.
        beam_size: Beam width of finals (1: greedy, fastest; 5: fewer errors,
            about 10 % more CPU per recognition).
        partial_beam_size: Beam width of partials (greedy: they are replaced anyway).
        glossary: Company and product names the model should expect.
        pad_s: Silence after each utterance in the encoder's window (see
            :meth:`WhisperEngine.transcribe_utterance`).
        digits: Write spoken numbers and spelled-out codes as digits.
    """

    def __init__(
        self,
        *,
        engine: WhisperEngine | None = None,
        model: str = "tiny.en",
        device: str = "cpu",
        compute_type: str = "int8",
        history: HistoryStore | None = None,
        call_id: str | None = None,
        call_started_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        silence_s: float = 0.5,
        max_utterance_s: float = 15.0,
        min_speech_s: float = 0.25,
        partials: bool = True,
        partial_interval_s: float = 3.0,
        beam_size: int = 5,
        partial_beam_size: int = 1,
        glossary: Sequence[str] = (),
        pad_s: float = 5.0,
        digits: bool = True,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._load = functools.partial(
            shared_engine, model=model, device=device, compute_type=compute_type
        )
        self._history = history
        self._call_id = call_id
        self._clock = clock
        self.call_started_at = clock() if call_started_at is None else call_started_at
        self._silence_frames = max(1, round(silence_s * SAMPLE_RATE / FRAME))
        self._max_frames = max(2, round(max_utterance_s * SAMPLE_RATE / FRAME))
        self._min_frames = max(1, round(min_speech_s * SAMPLE_RATE / FRAME))
        self._partials = partials
        self._partial_frames = max(1, round(partial_interval_s * SAMPLE_RATE / FRAME))
        self._beam_size = beam_size
        self._partial_beam_size = partial_beam_size
        self._prompt = glossary_prompt(glossary)
        self._pad_s = pad_s
        self._digits = digits
        self._speakers: dict[tuple[str, str], _Speaker] = {}
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._busy = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._readers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="live-stt")
        self._closed = False
        self._finalized: set[str] = set()
        # Speculative finals: recognition starts halfway through the closing
        # silence; if the pause turns out to be the end, its result is the
        # final (which saves most of the model's time from the lag), and if
        # the speaker goes on, it is shown as a partial.
        self._spec_frames = max(1, self._silence_frames // 2)
        self._spec_seq = 0
        self._spec_state: dict[int, str] = {}  # token -> pending | confirmed | dropped
        self._spec_results: dict[int, TranscriptSegment] = {}
        # Seconds of model time per second of audio, smoothed. Partials are
        # only worth their cost while they are cheap: on a busy CPU they would
        # delay the finals, so they stop until recognition is fast again.
        self._cost_per_s = 0.1
        self.partial_budget_s = 0.4
        self._stats = LiveStats()

    @property
    def stats(self) -> LiveStats:
        """Counters of the recognitions run so far (a snapshot)."""
        return self._stats

    @property
    def prompt(self) -> str:
        """The text given to the model before each utterance (from the glossary)."""
        return self._prompt

    @property
    def busy_s(self) -> float:
        """Seconds the model spent recognising (for the real-time factor)."""
        return self._stats.busy_s

    @property
    def jobs_done(self) -> int:
        """Recognitions run so far (partials and finals)."""
        return self._stats.recognitions

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        history: HistoryStore | None = None,
        call_id: str | None = None,
        **kw: Any,
    ) -> LiveTranscriber:
        """A transcriber using the ``stt_*`` settings and the ``speech_glossary``."""
        kw.setdefault("glossary", settings.speech_glossary_terms)
        return cls(
            model=settings.stt_model,
            device=settings.stt_device,
            compute_type=settings.stt_compute_type,
            history=history,
            call_id=call_id,
            **kw,
        )

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        on_segment: Callable[[TranscriptSegment], object],
        on_error: Callable[[SoftphoneError], object],
        history: HistoryStore | None = None,
        call_id: str | None = None,
    ) -> LiveTranscriber | None:
        """A started transcriber with its listeners, or None when it could not start.

        A failure to start (e.g. the model would not load) goes to ``on_error``
        like any later one: the call goes on without a live transcript.
        """
        live = cls.from_settings(settings, history=history, call_id=call_id)
        live.on("segment", on_segment)
        live.on("error", on_error)
        try:
            await live.start()
        except SoftphoneError as exc:
            on_error(exc)
            await live.aclose()
            return None
        return live

    @property
    def engine(self) -> WhisperEngine | None:
        """The loaded engine (None before :meth:`start`)."""
        return self._engine

    async def start(self) -> LiveTranscriber:
        """Load the model (in a worker thread) and start the transcription worker.

        Raises:
            SpeechError: The model could not be loaded.
            ConfigError: The bundled model is missing.
        """
        if self._engine is None:
            loop = asyncio.get_running_loop()
            self._engine = await loop.run_in_executor(self._pool, self._load)
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="live-stt-worker")
        return self

    # ---- audio in ---------------------------------------------------------

    def now_s(self) -> float:
        """Seconds since the call began."""
        return self._clock() - self.call_started_at

    def _state(self, speaker: str, leg: str) -> _Speaker:
        key = (speaker, leg)
        st = self._speakers.get(key)
        if st is None:
            st = _Speaker(speaker=speaker, leg=leg, origin_s=self.now_s())
            self._speakers[key] = st
        return st

    def restart_stream(self, speaker: str, *, leg: str = "call") -> None:
        """Mark a new stream for ``speaker`` (e.g. after a reconnect): times re-anchor to now.

        A pending utterance of the old stream is finalized first.
        """
        st = self._state(speaker, leg)
        self._end_utterance(st)
        st.origin_s = self.now_s()
        st.samples = 0
        st.rest = np.zeros(0, np.float32)

    def feed(
        self,
        speaker: str,
        samples: np.ndarray[Any, Any],
        *,
        sample_rate: int = 48000,
        leg: str = "call",
    ) -> None:
        """Add mono audio of ``speaker`` (int16 or float32 samples) in time order.

        Call on the event loop's thread (from an audio callback, use
        ``loop.call_soon_threadsafe``). Cheap: only the VAD runs here.
        """
        if self._closed:
            return
        st = self._state(speaker, leg)
        x = to_16k(np.asarray(samples).reshape(-1), sample_rate)
        if st.rest.size:
            x = np.concatenate([st.rest, x])
        n = len(x) // FRAME * FRAME
        st.rest = x[n:].copy()
        for i in range(0, n, FRAME):
            self._vad_frame(st, x[i : i + FRAME])

    def end_speaker(self, speaker: str, *, leg: str = "call") -> None:
        """The speaker's audio ended (left, track gone): finalize what they were saying."""
        st = self._speakers.get((speaker, leg))
        if st is not None:
            self._end_utterance(st)

    def add_remote(self, audio: RemoteAudio, *, leg: str = "call") -> asyncio.Task[None]:
        """Transcribe a remote participant's track until it ends.

        A second track of the same identity (after a reconnect) replaces the
        first one and continues the same speaker's timeline.
        """
        key = (audio.identity, leg)
        previous = self._readers.get(key)
        if previous is not None:
            previous.cancel()

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await previous
            stream = audio.stream(sample_rate=SAMPLE_RATE, frame_size_ms=20)
            self.restart_stream(audio.identity, leg=leg)
            try:
                async for ev in stream:
                    frame = ev.frame
                    self.feed(
                        audio.identity,
                        np.frombuffer(frame.data, dtype=np.int16),
                        sample_rate=frame.sample_rate,
                        leg=leg,
                    )
            finally:
                self.end_speaker(audio.identity, leg=leg)
                with contextlib.suppress(Exception):
                    await stream.aclose()

        task = self._spawn(run(), name=f"live-stt-track-{audio.sid}")
        self._readers[key] = task
        return task

    # ---- voice activity ---------------------------------------------------

    def _vad_frame(self, st: _Speaker, frame: np.ndarray[Any, Any]) -> None:
        rms = float(np.sqrt(np.mean(frame * frame)) + 1e-9)
        frame_end_s = st.origin_s + (st.samples + FRAME) / SAMPLE_RATE
        st.samples += FRAME
        st.recent_rms.append(rms)
        if st.in_speech and len(st.recent_rms) == FLOOR_WINDOW_FRAMES:
            st.floor = max(st.floor, min(st.recent_rms))
        threshold = max(MIN_THRESHOLD, st.floor * FLOOR_MARGIN)
        voiced = rms > threshold
        if not st.in_speech:
            # Track the noise floor only outside speech; fall fast, rise slowly.
            st.floor = rms if rms < st.floor else st.floor * 0.98 + rms * 0.02
            st.pre_roll.append(frame)
            if len(st.pre_roll) > PRE_ROLL_FRAMES:
                st.pre_roll.pop(0)
            st.voiced_run = st.voiced_run + 1 if voiced else 0
            if st.voiced_run >= 2:
                st.in_speech = True
                st.utterance = list(st.pre_roll)
                st.pre_roll = []
                st.utt_frames = len(st.utterance)
                st.utt_start_s = frame_end_s - st.utt_frames * FRAME / SAMPLE_RATE
                st.voiced_frames = 2
                st.silent_run = 0
                st.frames_at_partial = 0
                st.last_voiced_end_s = frame_end_s
                st.counter += 1
                st.segment_id = f"{st.leg}:{st.speaker}:{round(st.origin_s * 1000)}:{st.counter}"
            return
        st.utterance.append(frame)
        st.utt_frames += 1
        if voiced:
            st.voiced_frames += 1
            st.silent_run = 0
            st.last_voiced_end_s = frame_end_s
            if st.spec_token:
                self._drop_spec(st)
        else:
            st.silent_run += 1
            if (
                st.silent_run == self._spec_frames
                and not st.spec_token
                and st.voiced_frames >= self._min_frames
                # A pause after a partial or an earlier speculation of this
                # utterance waits for the real end: in fluent speech most
                # pauses are between sentences, and each early guess is a
                # whole recognition (shown only as a partial).
                and (
                    st.frames_at_partial == 0
                    or st.utt_frames - st.frames_at_partial >= self._partial_frames
                )
            ):
                st.frames_at_partial = st.utt_frames
                self._spec_seq += 1
                st.spec_token = self._spec_seq
                self._spec_state[st.spec_token] = "pending"
                self._enqueue(st, kind="spec", token=st.spec_token)
        if st.silent_run >= self._silence_frames or st.utt_frames >= self._max_frames:
            self._end_utterance(st)
        elif (
            self._partials
            and voiced  # a pause may be the end: then the final is due, not a partial
            and st.utt_frames - st.frames_at_partial >= self._partial_frames
            and self._cost_per_s * st.utt_frames * FRAME / SAMPLE_RATE <= self.partial_budget_s
            and not self._busy
            and self._queue.empty()
        ):
            st.frames_at_partial = st.utt_frames
            self._enqueue(st, kind="partial")

    def _drop_spec(self, st: _Speaker) -> None:
        """The speaker went on after the pause: the speculative result is only a partial."""
        token, st.spec_token = st.spec_token, 0
        self._spec_state[token] = "dropped"
        seg = self._spec_results.pop(token, None)
        if seg is not None:
            self._count(speculative_wasted=1)
            self._spec_state.pop(token, None)
            if seg.text and seg.segment_id not in self._finalized:
                self.emit("segment", dataclasses.replace(seg, final=False))

    def _end_utterance(self, st: _Speaker) -> None:
        if not st.in_speech:
            return
        if st.spec_token:
            token, st.spec_token = st.spec_token, 0
            seg = self._spec_results.pop(token, None)
            if seg is not None:  # already recognised during the pause: final at once
                self._spec_state.pop(token, None)
                self._finalize(seg)
            else:
                self._spec_state[token] = "confirmed"
        elif st.voiced_frames >= self._min_frames:
            self._enqueue(st, kind="final")
        if st.voiced_frames >= self._min_frames:  # a speculation needs as much
            self._count(utterances=1)
        st.in_speech = False
        st.utterance = []
        st.voiced_run = 0
        st.silent_run = 0

    def _enqueue(
        self, st: _Speaker, *, kind: Literal["partial", "final", "spec"], token: int = 0
    ) -> None:
        audio = np.concatenate(st.utterance) if st.utterance else np.zeros(0, np.float32)
        end_s = (
            st.last_voiced_end_s if kind != "partial" else st.utt_start_s + len(audio) / SAMPLE_RATE
        )
        self._queue.put_nowait(
            _Job(
                (st.speaker, st.leg),
                st.segment_id,
                st.speaker,
                st.leg,
                round(st.utt_start_s, 3),
                round(end_s, 3),
                audio,
                kind,
                token,
            )
        )

    # ---- recognition ------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            try:
                await self._run_job(loop, job)
            finally:
                self._queue.task_done()

    async def _run_job(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        if job.kind == "partial" and job.segment_id in self._finalized:
            return
        if job.kind == "spec" and self._spec_state.get(job.token) == "dropped":
            self._spec_state.pop(job.token, None)  # the speaker went on before we began
            return
        self._busy = True
        began = time.monotonic()
        try:
            assert self._engine is not None
            text = await loop.run_in_executor(
                self._pool,
                functools.partial(
                    self._engine.transcribe_utterance,
                    job.audio,
                    beam_size=self._beam_size if job.final else self._partial_beam_size,
                    prompt=self._prompt,
                    pad_s=self._pad_s,
                ),
            )
            if self._digits and text:
                text = spoken_to_digits(text)
        except SoftphoneError as exc:
            log.warning("live transcription failed", extra={"error": exc.message})
            self._spec_state.pop(job.token, None)
            self.emit("error", exc if isinstance(exc, SpeechError) else SpeechError(exc.message))
            return
        except Exception as exc:
            log.exception("live transcription failed")
            self._spec_state.pop(job.token, None)
            self.emit("error", SpeechError(f"live transcription failed ({exc.__class__.__name__})"))
            return
        finally:
            self._busy = False
            took = time.monotonic() - began
            cost = took / max(1.0, len(job.audio) / SAMPLE_RATE)
            self._cost_per_s = 0.7 * self._cost_per_s + 0.3 * cost
            self._count(partials=int(not job.final), finals=int(job.final), busy_s=took)
        seg = TranscriptSegment(
            speaker=job.speaker,
            start_s=job.start_s,
            end_s=job.end_s,
            text=text,
            final=job.final,
            leg=job.leg,
            segment_id=job.segment_id,
        )
        if job.kind == "final":
            self._finalize(seg)
        elif job.kind == "spec":
            state = self._spec_state.get(job.token, "dropped")
            if state == "confirmed":
                self._spec_state.pop(job.token, None)
                self._finalize(seg)
            elif state == "pending":
                self._spec_results[job.token] = seg  # the end is not decided yet
            else:  # the speaker went on while it ran
                self._count(speculative_wasted=1)
                self._spec_state.pop(job.token, None)
                if text and seg.segment_id not in self._finalized:
                    self.emit("segment", dataclasses.replace(seg, final=False))
        elif text and job.segment_id not in self._finalized:
            self.emit("segment", seg)

    def _count(self, **add: float) -> None:
        s = self._stats
        self._stats = dataclasses.replace(
            s,
            **{k: getattr(s, k) + v for k, v in add.items()},
        )

    def _finalize(self, seg: TranscriptSegment) -> None:
        """Emit a final segment (replacing its partials) and persist it."""
        self._finalized.add(seg.segment_id)
        self.emit("segment", seg)
        if seg.text and self._history is not None and self._call_id:
            self._spawn(self._persist(seg), name="live-stt-persist")

    async def _persist(self, seg: TranscriptSegment) -> None:
        assert self._history is not None and self._call_id is not None
        try:
            await self._history.add_segment(self._call_id, seg)
        except SoftphoneError as exc:
            # The segment was already shown; losing its row must not stop the call.
            log.warning("transcript segment not stored", extra={"error": exc.message})
            self.emit("error", SpeechError("a transcript segment could not be stored"))

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def flush(self) -> None:
        """Finalize every utterance in progress and wait until all are transcribed and stored.

        Does nothing before :meth:`start` (no model, so nothing can be transcribed).
        """
        if self._worker is None:
            return
        for st in self._speakers.values():
            if st.rest.size:
                pad = np.zeros(FRAME - st.rest.size, np.float32)
                frame = np.concatenate([st.rest, pad])
                st.rest = np.zeros(0, np.float32)
                self._vad_frame(st, frame)
            self._end_utterance(st)
        await self._queue.join()
        persisting = [t for t in self._tasks if t.get_name() == "live-stt-persist"]
        if persisting:
            await asyncio.gather(*persisting, return_exceptions=True)

    async def aclose(self) -> None:
        """Finalize what is pending, then stop the worker and track readers; idempotent."""
        if self._closed:
            return
        if self._worker is not None and not self._worker.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), 30.0)
        self._closed = True
        tasks = [t for t in (self._worker, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def __aenter__(self) -> LiveTranscriber:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
