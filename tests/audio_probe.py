"""Measuring received audio in tests and benchmarks: tone frequency, gaps, onsets.

Not a fake of anything: it reads real frames from a real ``rtc.AudioStream``
and analyses them with numpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import numpy as np
from livekit import rtc

from softphone.media.session import RemoteAudio

SAMPLE_RATE = 48000
WINDOW_MS = 10


def dominant_freq(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) with the most energy in ``samples``."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    return float(freqs[int(np.argmax(spectrum[1:])) + 1])


def tone_level(window: np.ndarray, freq: float, sample_rate: int = SAMPLE_RATE) -> float:
    """Amplitude of ``freq`` in a short window (single-bin DFT, Goertzel-like)."""
    t = np.arange(len(window)) / sample_rate
    ref = np.exp(-2j * np.pi * freq * t)
    return float(2 * np.abs(np.dot(window, ref)) / len(window))


@dataclasses.dataclass
class Capture:
    """Audio received from one track, with the arrival time of each 10 ms window."""

    samples: list[np.ndarray] = dataclasses.field(default_factory=list)
    times: list[float] = dataclasses.field(default_factory=list)

    def array(self) -> np.ndarray:
        """All received samples as floats in [-1, 1]."""
        if not self.samples:
            return np.zeros(0)
        return np.concatenate(self.samples).astype(np.float64) / 32768.0

    def windows(self) -> list[tuple[float, np.ndarray]]:
        """(arrival time, 10 ms of samples) pairs."""
        arr = self.array()
        n = SAMPLE_RATE * WINDOW_MS // 1000
        out = []
        idx = 0
        for t, s in zip(self.times, self.samples, strict=True):
            for k in range(len(s) // n):
                out.append((t, arr[idx + k * n : idx + (k + 1) * n]))
            idx += len(s)
        return out

    def first_time_with(self, freq: float, after: float, threshold: float = 0.05) -> float | None:
        """Arrival time of the first window after ``after`` where ``freq`` is present."""
        for t, w in self.windows():
            if t >= after and tone_level(w, freq) > threshold:
                return t
        return None

    def longest_gap_ms(
        self, freqs: tuple[float, ...], start: float, end: float, threshold: float = 0.05
    ) -> float:
        """Longest run (ms of audio) between ``start`` and ``end`` with none of ``freqs`` present."""
        longest = run = 0
        for t, w in self.windows():
            if t < start or t > end:
                continue
            if any(tone_level(w, f) > threshold for f in freqs):
                run = 0
            else:
                run += WINDOW_MS
                longest = max(longest, run)
        return float(longest)


class Listener:
    """Reads a remote track in the background into a :class:`Capture`."""

    def __init__(self, audio: RemoteAudio | rtc.RemoteAudioTrack) -> None:
        track = audio.track if isinstance(audio, RemoteAudio) else audio
        self.stream = rtc.AudioStream.from_track(
            track=track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=WINDOW_MS
        )
        self.capture = Capture()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for ev in self.stream:
            pcm = np.frombuffer(ev.frame.data, dtype=np.int16).copy()
            self.capture.samples.append(pcm)
            self.capture.times.append(time.monotonic())

    async def aclose(self) -> None:
        """Stop reading."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self.stream.aclose()
