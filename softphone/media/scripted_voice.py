"""A scripted support call spoken into microphones, so the demo shows its value anywhere.

On a machine with no microphone the demo's windows would send nothing: no
live transcript, no summary, nothing for Agent B's offer to show. Here a
short support call (:data:`DEMO_CALL`) is spoken with espeak-ng, one voice per
party, and laid out on one timeline as one track per party: each party's
track is silent while the other one talks, so the caller's track leaves
pauses in which Agent A (scripted or a person) answers.

- :func:`render_script` speaks the turns (blocking: run it in a worker
  thread). Each turn is rendered once and kept under the user's cache
  directory, keyed by its text and voice (about 1.5 MB for the demo call).
- :class:`ScriptPlayer` pushes one track into an ``rtc.AudioSource`` (a
  window's microphone source) in real time.
- :class:`ScriptedCall` starts every party's player at the same instant,
  so the turns meet as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
from livekit import rtc

from softphone.config import cache_home
from softphone.errors import MediaError
from softphone.media.tone import FrameFeeder

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FRAME_MS = 20  # half the wake-ups of 10 ms frames; the script changes nothing mid-frame
LEAD_S = 0.06  # how far ahead of real time the player may push
GIVE_UP_S = 5.0  # a source refusing frames this long is taken as closed
ESPEAK_SPEED = 160  # words per minute: clear enough for a small Whisper model
RENDER_TIMEOUT_S = 60.0

Party = Literal["caller", "agent"]


@dataclasses.dataclass(frozen=True)
class Turn:
    """One scripted turn: who speaks and what."""

    party: Party
    text: str


# A call that needs a warm transfer: billing refunds are another team's job.
# Numbers, a name and a date give the summary card key facts to find.
DEMO_CALL: tuple[Turn, ...] = (
    Turn("agent", "Thank you for calling Northwind support. This is Alex. How can I help you?"),
    Turn(
        "caller",
        "Hi, this is Maria Lopez. My order number 58213 was charged twice,"
        " and I am really frustrated.",
    ),
    Turn("agent", "I am sorry about that. What was the amount?"),
    Turn("caller", "It was 49 dollars and 99 cents, both on March 3rd."),
    Turn(
        "agent",
        "I can see both charges. Our billing team will refund the duplicate charge,"
        " so I will transfer you to them.",
    ),
    Turn("caller", "Okay, thank you. I need the refund this week."),
)

# One voice per party, so a listener tells them apart.
VOICES: dict[Party, str] = {"caller": "en-us+f3", "agent": "en-gb+m3"}


@dataclasses.dataclass(frozen=True)
class ScriptLine:
    """Where a turn landed on the script's timeline (seconds from its start)."""

    party: Party
    start_s: float
    end_s: float
    text: str


@dataclasses.dataclass(frozen=True)
class RenderedScript:
    """A script as one 16-bit mono 48 kHz track per party, all of the same length.

    Attributes:
        tracks: Party -> samples; silent while another party speaks.
        lines: Each turn's place on the timeline.
    """

    tracks: Mapping[Party, np.ndarray]
    lines: tuple[ScriptLine, ...]

    @property
    def duration_s(self) -> float:
        """Length of the script, seconds."""
        return max((len(t) for t in self.tracks.values()), default=0) / SAMPLE_RATE

    def text_of(self, party: Party) -> str:
        """Everything ``party`` says, in order."""
        return " ".join(line.text for line in self.lines if line.party == party)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where rendered turns are kept: ``$XDG_CACHE_HOME/softphone/demo-voice``."""
    return cache_home(env) / "demo-voice"


def _key(text: str, voice: str, speed: int) -> str:
    return hashlib.sha256(f"{voice}\n{speed}\n{text}".encode()).hexdigest()[:32]


def _read_wav(path: Path) -> np.ndarray:
    """A mono 16-bit WAV resampled to 48 kHz.

    Raises:
        MediaError: The file is not mono 16-bit PCM WAV.
    """
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise MediaError("a scripted voice file is not mono 16-bit PCM")
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    except (OSError, EOFError, wave.Error) as exc:
        raise MediaError("a scripted voice file could not be read") from exc
    if rate <= 0 or raw.size == 0:
        raise MediaError("a scripted voice file is empty")
    if rate == SAMPLE_RATE:
        return raw.copy()
    n_out = int(len(raw) * SAMPLE_RATE / rate)
    t_out = np.arange(n_out) / SAMPLE_RATE
    out = np.interp(t_out, np.arange(len(raw)) / rate, raw.astype(np.float32))
    return np.asarray(out.astype(np.int16))


def render_turn(text: str, voice: str, *, cache_dir: Path, speed: int = ESPEAK_SPEED) -> np.ndarray:
    """One turn spoken with espeak-ng at 48 kHz: from the cache, or rendered now and cached.

    Blocking (a child process): call it from a worker thread.

    Raises:
        MediaError: espeak-ng is missing or failed, or a cached file is unreadable.
    """
    cached = cache_dir / f"{_key(text, voice, speed)}.wav"
    if cached.is_file():
        try:
            return _read_wav(cached)
        except MediaError:
            log.warning("a cached scripted voice file was unreadable; rendering it again")
            cached.unlink(missing_ok=True)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise MediaError(
            "espeak-ng is missing: install it (./dev setup does) for the scripted call"
        )
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".render-", suffix=".wav")
    os.close(fd)  # mkstemp made it 0600; espeak-ng writes into it
    tmp = Path(tmp_name)
    try:
        try:
            subprocess.run(
                [espeak, "-v", voice, "-s", str(speed), "-w", str(tmp), "--", text],
                check=True,
                capture_output=True,
                timeout=RENDER_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MediaError("espeak-ng could not render the scripted call") from exc
        pcm = _read_wav(tmp)
        os.replace(tmp, cached)  # whole files only: a crash leaves no half-written cache
    finally:
        tmp.unlink(missing_ok=True)
    return pcm


def render_script(
    turns: Sequence[Turn] = DEMO_CALL,
    *,
    cache_dir: Path | None = None,
    voices: Mapping[Party, str] = VOICES,
    lead_s: float = 1.0,
    gap_s: float = 1.0,
) -> RenderedScript:
    """Speak ``turns`` and lay them out one after the other, one track per party.

    Blocking (espeak-ng, on the first use only): call it from a worker thread.

    Args:
        turns: The script.
        cache_dir: Where rendered turns are kept (default: :func:`default_cache_dir`).
        voices: The espeak-ng voice of each party.
        lead_s: Silence before the first turn (listeners subscribe meanwhile).
        gap_s: Silence between turns.

    Raises:
        MediaError: A turn could not be rendered.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    pieces = [render_turn(t.text, voices[t.party], cache_dir=cache) for t in turns]
    gap = int(gap_s * SAMPLE_RATE)
    total = int(lead_s * SAMPLE_RATE) + sum(len(p) + gap for p in pieces)
    tracks: dict[Party, np.ndarray] = {p: np.zeros(total, dtype=np.int16) for p in voices}
    lines = []
    at = int(lead_s * SAMPLE_RATE)
    for turn, pcm in zip(turns, pieces, strict=True):
        tracks[turn.party][at : at + len(pcm)] = pcm
        lines.append(
            ScriptLine(turn.party, at / SAMPLE_RATE, (at + len(pcm)) / SAMPLE_RATE, turn.text)
        )
        at += len(pcm) + gap
    return RenderedScript(tracks=tracks, lines=tuple(lines))


class ScriptPlayer:
    """Pushes one track into an ``rtc.AudioSource`` in real time, once.

    Args:
        source: The source the frames go to (48 kHz mono), e.g. a window's
            microphone source.
        pcm: The track (int16, 48 kHz).
        on_block: Also given every frame's samples as they are pushed (e.g.
            the speaker's own live transcript, which a real microphone feeds
            through its taps).
    """

    def __init__(
        self,
        source: rtc.AudioSource,
        pcm: np.ndarray,
        *,
        on_block: Callable[[np.ndarray], object] | None = None,
    ) -> None:
        self._source = source
        self._pcm = np.ascontiguousarray(pcm, dtype=np.int16)
        self._on_block = on_block
        self._task: asyncio.Task[None] | None = None
        self.pushed_s = 0.0  # how much of the track went into the source so far

    @property
    def playing(self) -> bool:
        """Whether frames are being pushed now."""
        return self._task is not None and not self._task.done()

    def start(self, at: float | None = None) -> asyncio.Task[None]:
        """Start pushing frames (at monotonic time ``at``, default now); returns the task."""
        if self._task is None:
            begin = time.monotonic() if at is None else at
            self._task = asyncio.get_running_loop().create_task(
                self._run(begin), name="scripted-voice"
            )
        return self._task

    async def _run(self, begin: float) -> None:
        n = SAMPLE_RATE * FRAME_MS // 1000
        wait = begin - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        feeder = FrameFeeder(self._source, GIVE_UP_S)
        for offset in range(0, len(self._pcm), n):
            # Stay at most LEAD_S ahead of real time: the source's queue stays
            # short, and a muted or moved track loses little.
            ahead = begin + offset / SAMPLE_RATE - time.monotonic()
            if ahead > LEAD_S:
                await asyncio.sleep(ahead - LEAD_S)
            block = self._pcm[offset : offset + n]
            if len(block) < n:
                block = np.concatenate((block, np.zeros(n - len(block), dtype=np.int16)))
            if self._on_block is not None:
                try:
                    self._on_block(block)
                except Exception:
                    log.debug("scripted voice listener failed", exc_info=True)
            try:
                frame = rtc.AudioFrame(block.tobytes(), SAMPLE_RATE, 1, n)
                if await feeder.capture(frame):
                    self.pushed_s += FRAME_MS / 1000
            except MediaError:
                log.warning("scripted voice stopped: its source takes no frames", exc_info=True)
                return

    async def wait(self) -> None:
        """Return once the whole track was pushed (or the player was closed)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """Stop pushing frames."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class ScriptedCall:
    """Plays a rendered script: each scripted party's track into its source, in step.

    Use as ``async with ScriptedCall(script, sources={...}) as call: await call.wait()``.

    Args:
        script: The rendered script.
        sources: The source of each party to script; a party left out is a
            person (their turns stay pauses in the other tracks).
        listeners: Optional per-party ``on_block`` (see :class:`ScriptPlayer`).
    """

    def __init__(
        self,
        script: RenderedScript,
        *,
        sources: Mapping[Party, rtc.AudioSource],
        listeners: Mapping[Party, Callable[[np.ndarray], object]] | None = None,
    ) -> None:
        self.script = script
        self.started_at: float | None = None
        self._players = {
            party: ScriptPlayer(source, script.tracks[party], on_block=(listeners or {}).get(party))
            for party, source in sources.items()
        }

    def start(self, *, delay_s: float = 0.05) -> None:
        """Start every player at the same instant, ``delay_s`` from now."""
        if self.started_at is None:
            self.started_at = time.monotonic() + delay_s
            for p in self._players.values():
                p.start(self.started_at)

    @property
    def playing(self) -> bool:
        """Whether any party is still speaking its track."""
        return any(p.playing for p in self._players.values())

    @property
    def pushed_s(self) -> dict[Party, float]:
        """How much of each party's track was played so far, seconds."""
        return {party: p.pushed_s for party, p in self._players.items()}

    async def wait(self) -> None:
        """Return once every track was played."""
        for p in self._players.values():
            await p.wait()

    async def aclose(self) -> None:
        """Stop every player."""
        for p in self._players.values():
            await p.aclose()

    async def __aenter__(self) -> ScriptedCall:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
