"""Packing a transcript into a size-limited message (the transfer offer)."""

from __future__ import annotations

import json

import pytest

from softphone.domain.transcript import TranscriptSegment, pack_transcript, unpack_transcript

pytestmark = pytest.mark.unit


def _call(n: int) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(
            "caller" if i % 2 else "agent-a",
            i * 3.0,
            i * 3.0 + 2.5,
            f"Sentence number {i} about order 4711 and a refund.",
        )
        for i in range(n)
    ]


def test_a_short_transcript_travels_whole() -> None:
    segs = [*_call(5), TranscriptSegment("caller", 99, 100, "partial", final=False)]
    packed = pack_transcript(segs, 14 * 1024)
    back, omitted = unpack_transcript(json.loads(json.dumps(packed)))
    assert omitted == 0
    assert [(s.speaker, s.start_s, s.text) for s in back] == [
        (s.speaker, s.start_s, s.text) for s in segs[:5]
    ]


def test_a_long_transcript_keeps_its_latest_part_within_budget() -> None:
    segs = _call(2000)
    packed = pack_transcript(list(reversed(segs)), 14 * 1024)
    assert len(json.dumps(packed).encode()) <= 14 * 1024
    back, omitted = unpack_transcript(packed)
    assert omitted == 2000 - len(back) > 0
    assert back[-1].text == segs[-1].text
    assert [s.start_s for s in back] == sorted(s.start_s for s in back)


def test_malformed_rows_from_a_peer_are_skipped() -> None:
    data = {
        "transcript": [["a", 0, 1, "ok"], ["b", "x", 1, "bad"], "junk", ["c", 1, 2]],
        "transcript_omitted": -3,
    }
    back, omitted = unpack_transcript(data)
    assert [s.text for s in back] == ["ok"] and omitted == 0
    assert unpack_transcript({"transcript": "nope"}) == ([], 0)
