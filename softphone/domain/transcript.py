"""Transcript segments: who said what, when, in one call's timeline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class TranscriptSegment:
    """One utterance of one speaker.

    Attributes:
        speaker: The participant identity the audio came from (from the track,
            not from diarization).
        start_s: Start, seconds since the call began.
        end_s: End, seconds since the call began.
        text: What was said.
        final: False for a partial result that a final one will replace.
        leg: Which leg of the call: ``call`` (R1) or ``consult`` (R2).
        segment_id: Stable id, so a final segment replaces its partial.
    """

    speaker: str
    start_s: float
    end_s: float
    text: str
    final: bool = True
    leg: str = "call"
    segment_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscriptSegment:
        """Build from a dict as produced by :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def as_text(segments: Iterable[TranscriptSegment]) -> str:
    """Render segments as ``speaker: text`` lines in time order."""
    ordered = sorted(segments, key=lambda s: (s.start_s, s.end_s))
    return "\n".join(f"{s.speaker}: {s.text}" for s in ordered if s.text.strip())
