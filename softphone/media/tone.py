"""Generated audio: sine tones and silence, pushed in real time.

Used for hold audio, ringback and test signals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time

import numpy as np
from livekit import rtc

from softphone.errors import MediaError

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FRAME_MS = 10
LEAD_S = 0.03
# A tone's source that refuses every frame this long is given up (FrameFeeder).
GIVE_UP_S = 2.0


def tone_frame(
    freq: float,
    start_sample: int,
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_ms: int = FRAME_MS,
    amplitude: float = 0.3,
) -> rtc.AudioFrame:
    """One mono 16-bit frame of a sine at ``freq`` Hz (0: silence), phase-continuous."""
    n = sample_rate * frame_ms // 1000
    t = (np.arange(n) + start_sample) / sample_rate
    samples = amplitude * np.sin(2 * math.pi * freq * t) if freq > 0 else np.zeros(n)
    pcm = (samples * 32767).astype(np.int16)
    return rtc.AudioFrame(pcm.tobytes(), sample_rate, 1, n)


@functools.lru_cache(maxsize=64)
def tone_cycle(
    freq: float, *, sample_rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS
) -> tuple[rtc.AudioFrame, ...] | None:
    """The frames of one period-aligned cycle of ``freq``, computed once and reused.

    A cycle is the fewest frames (at most one second's worth) holding a whole
    number of periods, so playing them in a loop is the same signal as
    :func:`tone_frame` at every sample index. Playing from it costs a lookup
    per frame instead of a sine per frame (cheap enough for many players in
    one process).

    Returns:
        The frames, or None when no whole cycle fits in one second (e.g. a
        frequency with many decimals): compute each frame then.
    """
    n = sample_rate * frame_ms // 1000
    for k in range(1, 1000 // frame_ms + 1):
        periods = freq * k * n / sample_rate
        if abs(periods - round(periods)) < 1e-9:
            return tuple(
                tone_frame(freq, i * n, sample_rate=sample_rate, frame_ms=frame_ms)
                for i in range(k)
            )
    return None


class FrameFeeder:
    """Captures frames into a source, skipping the ones it refuses.

    The SDK refuses a frame while another capture into the same source is
    under way (a microphone just closed may still be pumping its last
    blocks): that frame is lost and the next one is tried. A source that
    refuses every frame for ``give_up_s`` is taken as closed.
    """

    def __init__(self, source: rtc.AudioSource, give_up_s: float) -> None:
        self._source = source
        self._give_up_s = give_up_s
        self._refused_since: float | None = None

    async def capture(self, frame: rtc.AudioFrame) -> bool:
        """Capture ``frame``: True if it was taken, False if refused (skipped).

        Raises:
            MediaError: The source refused every frame for ``give_up_s``.
        """
        try:
            await self._source.capture_frame(frame)
        except Exception as exc:
            now = time.monotonic()
            if self._refused_since is None:
                self._refused_since = now
                log.debug("a frame was refused", exc_info=True)
            elif now - self._refused_since >= self._give_up_s:
                raise MediaError("the audio source takes no frames") from exc
            return False
        self._refused_since = None
        return True


class TonePlayer:
    """Pushes a tone into an ``rtc.AudioSource`` in real time until stopped.

    The frequency can be changed while it plays (0 is silence), which lets
    tests mark an instant in the audio.

    Args:
        source: The audio source the frames go to (48 kHz mono).
        freq: Initial frequency in Hz.
        frame_ms: Length of each frame pushed. Longer frames mean fewer
            wake-ups and FFI calls (hold audio for many calls in one process)
            but a change of frequency takes up to about that long to be heard.
    """

    def __init__(
        self, source: rtc.AudioSource, freq: float = 440.0, *, frame_ms: int = FRAME_MS
    ) -> None:
        self._source = source
        self._frame_ms = frame_ms
        self.freq = freq
        self._task: asyncio.Task[None] | None = None
        self.changed_at: float | None = None

    def set_freq(self, freq: float) -> float:
        """Change the frequency; returns the monotonic time of the change."""
        self.freq = freq
        self.changed_at = time.monotonic()
        return self.changed_at

    @property
    def running(self) -> bool:
        """Whether frames are being pushed (not before start, after aclose, or once given up)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start pushing frames in a background task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        sample = 0
        ms = self._frame_ms
        n = SAMPLE_RATE * ms // 1000
        lead = max(LEAD_S, 1.5 * ms / 1000)
        started = time.monotonic()
        feeder = FrameFeeder(self._source, GIVE_UP_S)
        while True:
            # Stay at most `lead` ahead of real time, so that a change of
            # frequency is heard promptly instead of after a full queue.
            ahead = started + sample / SAMPLE_RATE - time.monotonic()
            if ahead > lead:
                await asyncio.sleep(ahead - lead)
            cycle = tone_cycle(self.freq, frame_ms=ms)
            frame = (
                cycle[(sample // n) % len(cycle)]
                if cycle
                else tone_frame(self.freq, sample, frame_ms=ms)
            )
            sample += n
            try:
                await feeder.capture(frame)
            except MediaError:
                log.warning("tone stopped: its source takes no frames", exc_info=True)
                return

    async def aclose(self) -> None:
        """Stop pushing frames."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
