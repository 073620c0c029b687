"""Transcript segments: who said what, when, in one call's timeline."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
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


def pack_transcript(segments: Sequence[TranscriptSegment], budget_bytes: int) -> dict[str, Any]:
    """Pack the latest final segments into at most ``budget_bytes`` of JSON.

    Used where the transcript rides in a size-limited message (an RPC
    payload): the most recent segments are kept, and ``transcript_omitted``
    counts the earlier ones that did not fit, so the reader can say so.

    Returns:
        ``{"transcript": [[speaker, start_s, end_s, text], ...],
        "transcript_omitted": n}`` in time order.
    """
    finals = sorted((s for s in segments if s.final and s.text.strip()), key=lambda s: s.start_s)
    kept: list[list[Any]] = []
    used = len('{"transcript": [], "transcript_omitted": 000000}')
    for seg in reversed(finals):
        row = [seg.speaker, round(seg.start_s, 2), round(seg.end_s, 2), seg.text]
        size = len(json.dumps(row).encode()) + 2
        if used + size > budget_bytes:
            break
        kept.append(row)
        used += size
    kept.reverse()
    return {"transcript": kept, "transcript_omitted": len(finals) - len(kept)}


def unpack_transcript(data: Mapping[str, Any]) -> tuple[list[TranscriptSegment], int]:
    """Read what :func:`pack_transcript` wrote; malformed rows are skipped.

    Returns:
        The segments and how many earlier ones were left out.
    """
    rows = data.get("transcript") or []
    out: list[TranscriptSegment] = []
    if isinstance(rows, list):
        for row in rows:
            if (
                isinstance(row, list)
                and len(row) == 4
                and isinstance(row[0], str)
                and isinstance(row[1], int | float)
                and isinstance(row[2], int | float)
                and isinstance(row[3], str)
            ):
                out.append(TranscriptSegment(row[0], float(row[1]), float(row[2]), row[3]))
    omitted = data.get("transcript_omitted", 0)
    return out, omitted if isinstance(omitted, int) and omitted >= 0 else 0
