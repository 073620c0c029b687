"""Clean microphone audio: echo cancellation, noise suppression, high-pass filter, gain control.

WebRTC's audio processing (``livekit.rtc.AudioProcessingModule``) runs on the
sounddevice path: the microphone's blocks go through :meth:`AudioProcessor.process_capture`
before they reach the ``rtc.AudioSource``, and every block the speaker hands
to the output device goes through :meth:`AudioProcessor.process_render` first,
as the echo canceller's reverse stream (what the room will hear, so what the
microphone may pick up again). Why this route and not ``rtc.PlatformAudio``:
see ``docs/notes-audio.md``.

The module works on 10 ms frames only. Blocks that are whole multiples of
10 ms (the devices open with such blocks) pass with no added delay; any other
length is cut into 10 ms frames and the remainder is carried over to the next
block, which delays the microphone by less than 10 ms.

Both sides are called from PortAudio's threads (capture and playback run on
different ones, with blocks of different sizes); one lock guards the module,
so reconfiguring from the event loop is safe at any time. The render side only
queues its frames; the capture side hands them to the module interleaved with
its own, one reverse frame per capture frame (more when the queue grows), as
WebRTC's own device module does: fed in bursts from two threads, the echo
canceller took the jitter for a changing echo delay and let echo through. The native module is built on first use, not when
the processor is made, so making one touches no native code (the LiveKit
runtime must not start before a process forks its workers).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

import numpy as np
from livekit import rtc

from softphone.config import Settings

log = logging.getLogger(__name__)

FRAME_MS = 10
# Reverse frames queued for the capture side at most (older ones are dropped:
# with no microphone running, nothing takes them).
MAX_RENDER_FRAMES = 50
# Reverse frames allowed to wait per capture frame before more are fed at once.
RENDER_SLACK_FRAMES = 4
# A delay hint beyond this is not a device latency but a wrong reading.
MAX_DELAY_MS = 500


@dataclasses.dataclass(frozen=True)
class ProcessingOptions:
    """Which processing runs on the microphone (every one on by default).

    Attributes:
        echo_cancellation: Remove the speaker's sound picked up by the microphone.
        noise_suppression: Remove steady background noise (fans, a busy room).
        high_pass: Remove rumble below speech (desk knocks, hum).
        auto_gain: Keep the voice at a steady level.
    """

    echo_cancellation: bool = True
    noise_suppression: bool = True
    high_pass: bool = True
    auto_gain: bool = True

    @classmethod
    def off(cls) -> ProcessingOptions:
        """Raw microphone audio."""
        return cls(False, False, False, False)

    @property
    def any_on(self) -> bool:
        """True when at least one kind of processing runs."""
        return any(dataclasses.astuple(self))

    def describe(self) -> str:
        """A short human text of what is on, e.g. ``echo cancel, noise, high-pass, gain``."""
        names = (
            ("echo cancel", self.echo_cancellation),
            ("noise", self.noise_suppression),
            ("high-pass", self.high_pass),
            ("gain", self.auto_gain),
        )
        on = [name for name, enabled in names if enabled]
        return ", ".join(on) if on else "off"


class _Framer:
    """Cuts arbitrary blocks into whole 10 ms frames, carrying the remainder over."""

    def __init__(self, frame: int) -> None:
        self._frame = frame
        self._pending = np.zeros(0, dtype=np.int16)

    def frames(self, pcm: np.ndarray) -> np.ndarray:
        """The whole frames available now, as a 2-D (frames, samples) int16 array."""
        if self._pending.size:
            pcm = np.concatenate((self._pending, pcm))
        whole = pcm.size // self._frame * self._frame
        self._pending = pcm[whole:].copy()
        return pcm[:whole].reshape(-1, self._frame)

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)


class AudioProcessor:
    """WebRTC audio processing for one microphone and the speaker next to it.

    Args:
        options: What to run (default: everything).
        sample_rate: The devices' rate (mono, 16-bit).

    Attributes:
        busy_s: Seconds spent inside the module so far (for CPU accounting).
        frames: 10 ms capture frames processed so far.
    """

    def __init__(
        self, options: ProcessingOptions | None = None, *, sample_rate: int = 48000
    ) -> None:
        self._rate = sample_rate
        self._frame = sample_rate * FRAME_MS // 1000
        self._lock = threading.Lock()
        self._capture = _Framer(self._frame)
        self._render = _Framer(self._frame)
        self._render_queue: collections.deque[np.ndarray] = collections.deque(
            maxlen=MAX_RENDER_FRAMES
        )
        self._delay_ms = 0
        self._apm: rtc.AudioProcessingModule | None = None
        self._stale = True  # the module does not match the options yet
        self._options = options or ProcessingOptions()
        self.busy_s = 0.0
        self.frames = 0

    @property
    def options(self) -> ProcessingOptions:
        """What runs now."""
        return self._options

    def configure(self, options: ProcessingOptions) -> None:
        """Run ``options`` from the next block on (a fresh module: the echo canceller re-learns)."""
        with self._lock:
            if options == self._options:
                return
            self._options = options
            self._stale = True
        log.info("audio processing set", extra={"processing": options.describe()})

    def reset(self) -> None:
        """Start afresh from the next block (another microphone: another room, another noise)."""
        with self._lock:
            self._stale = True

    def _module(self) -> rtc.AudioProcessingModule | None:
        """The module matching the options (built when they changed); hold the lock."""
        if self._stale:
            options = self._options
            self._apm = (
                rtc.AudioProcessingModule(
                    echo_cancellation=options.echo_cancellation,
                    noise_suppression=options.noise_suppression,
                    high_pass_filter=options.high_pass,
                    auto_gain_control=options.auto_gain,
                )
                if options.any_on
                else None
            )
            self._stale = False
            self._capture.reset()
            self._render.reset()
            self._render_queue.clear()
        return self._apm

    def set_device_delay_ms(self, delay_ms: float) -> None:
        """Tell the echo canceller how long the speaker-to-microphone round trip takes.

        It is the output latency plus the input latency of the devices; the
        echo canceller searches around it, so a rough value is enough.
        """
        with self._lock:
            self._delay_ms = int(min(MAX_DELAY_MS, max(0.0, delay_ms)))

    def process_capture(self, pcm: np.ndarray) -> np.ndarray:
        """Clean one block of microphone samples (int16, mono).

        Returns:
            The processed samples: the same length when the block is whole
            10 ms frames, else what whole frames there are so far.
        """
        with self._lock:
            apm = self._module()
            if apm is None:
                return pcm
            frames = self._capture.frames(pcm)
            started = time.perf_counter()
            out = np.empty_like(frames)
            echo = self._options.echo_cancellation
            queue = self._render_queue
            for i, samples in enumerate(frames):
                if echo:
                    for _ in range(min(len(queue), max(1, len(queue) - RENDER_SLACK_FRAMES))):
                        reverse = queue.popleft()
                        apm.process_reverse_stream(
                            rtc.AudioFrame(reverse.tobytes(), self._rate, 1, self._frame)
                        )
                    apm.set_stream_delay_ms(self._delay_ms)
                frame = rtc.AudioFrame(samples.tobytes(), self._rate, 1, self._frame)
                apm.process_stream(frame)
                out[i] = np.frombuffer(frame.data, dtype=np.int16)
            self.busy_s += time.perf_counter() - started
            self.frames += len(frames)
            return out.reshape(-1)

    def process_render(self, pcm: np.ndarray) -> None:
        """Queue one block about to be played (int16, mono) for the echo canceller.

        The block itself is not changed: what is played is what was given.
        """
        with self._lock:
            if not (self._options.any_on and self._options.echo_cancellation):
                return
            self._render_queue.extend(self._render.frames(pcm).copy())


def options_from_settings(settings: Settings) -> ProcessingOptions:
    """The processing a profile's settings ask for."""
    return ProcessingOptions(
        echo_cancellation=settings.echo_cancellation,
        noise_suppression=settings.noise_suppression,
        high_pass=settings.high_pass,
        auto_gain=settings.auto_gain,
    )
