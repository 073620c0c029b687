"""Audio levels for meters: the loudness of 16-bit PCM frames on a 0..1 scale.

Pure numpy, no I/O; the capture and playback callbacks call :meth:`LevelTracker.feed`
from their own threads and the UI reads :attr:`LevelTracker.level` on a timer.
"""

from __future__ import annotations

import math

import numpy as np

FLOOR_DB = -60.0


def level_of(pcm: np.ndarray | bytes | memoryview) -> float:
    """The RMS level of 16-bit samples mapped from ``FLOOR_DB``..0 dBFS to 0..1."""
    samples = np.frombuffer(pcm, dtype=np.int16) if not isinstance(pcm, np.ndarray) else pcm
    if samples.size == 0:
        return 0.0
    x = samples.astype(np.float32)
    rms = math.sqrt(float(np.dot(x, x)) / x.size) / 32768.0
    if rms <= 0.0:
        return 0.0
    db = 20.0 * math.log10(rms)
    return min(1.0, max(0.0, (db - FLOOR_DB) / -FLOOR_DB))


class LevelTracker:
    """A meter value that rises at once and falls back smoothly (peak hold with decay).

    Args:
        decay: How much of the previous value is kept per update (0..1).
    """

    def __init__(self, *, decay: float = 0.85) -> None:
        self._decay = decay
        self.level = 0.0

    def feed(self, pcm: np.ndarray | bytes | memoryview) -> None:
        """Update the level with one block of 16-bit samples."""
        self.level = max(level_of(pcm), self.level * self._decay)

    def reset(self) -> None:
        """Drop to silence (device closed, muted)."""
        self.level = 0.0
