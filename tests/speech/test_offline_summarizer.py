"""The offline summarizer over the scripted corpus and over awkward transcripts."""

from __future__ import annotations

import random

import pytest

from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.speech.offline_summarizer import OfflineSummarizer, find_roles
from softphone.speech.summarizer import summarize_with_fallback
from tests.speech.corpus import Call, fact_recall

pytestmark = pytest.mark.unit


def seg(speaker: str, t: float, text: str) -> TranscriptSegment:
    return TranscriptSegment(speaker, t, t + 2.0, text)


async def test_corpus_key_fact_recall_and_sentiment(corpus: list[Call]) -> None:
    summarizer = OfflineSummarizer()
    found = total = 0
    for call in corpus:
        card = await summarizer.summarize(call.reference_segments())
        assert card.source == "offline" and not card.fallback
        text = card.to_text()
        recall = fact_recall(call.facts, text)
        assert recall >= 0.75, (call.id, [f for f in call.facts if f.lower() not in text.lower()])
        found += round(recall * len(call.facts))
        total += len(call.facts)
        assert card.sentiment == call.sentiment, call.id
        assert card.reason and card.next_step
    assert found / total >= 0.9


async def test_reason_comes_from_the_callers_opening() -> None:
    card = await OfflineSummarizer().summarize(
        [
            seg("agent-1", 0, "Thank you for calling. How can I help?"),
            seg("caller-1", 2, "Hello there. My parcel never arrived and I need it for Monday."),
            seg("agent-1", 5, "I have reordered it for you."),
        ]
    )
    assert "never arrived" in card.reason
    assert card.actions_taken == ("I have reordered it for you.",)


def test_roles_are_guessed_from_what_people_say() -> None:
    segs = [
        seg("alice", 0, "Thank you for calling Acme, how can I help?"),
        seg("bob", 2, "Hi, I was charged twice."),
        seg("alice", 4, "Let me check that. Is there anything else?"),
    ]
    assert find_roles(segs) == ("bob", "alice")
    assert find_roles([]) == (None, None)


async def test_empty_transcript_gives_a_sensible_card() -> None:
    card = await OfflineSummarizer().summarize([])
    assert card.reason == "No speech was transcribed."
    assert card.key_facts == () and card.sentiment == "unknown"
    assert "Reason: No speech" in card.to_text()
    assert "### Call summary" in card.to_markdown()


async def test_very_short_and_blank_segments() -> None:
    card = await OfflineSummarizer().summarize(
        [seg("caller-1", 0, "Hi."), seg("agent-1", 1, "   "), seg("caller-1", 2, "")]
    )
    assert card.reason == "Hi."
    assert card.next_step


async def test_one_sided_transcript_says_so() -> None:
    card = await OfflineSummarizer().summarize(
        [
            seg("agent-1", 0, "Thank you for calling, how can I help?"),
            seg("agent-1", 3, "Hello? Are you there? I will call you back on 555-201-7788."),
        ]
    )
    assert card.sentiment == "unknown"
    assert "only one side" in card.next_step
    assert "Phone: 555-201-7788" in card.key_facts


async def test_noisy_transcript_never_raises() -> None:
    rng = random.Random(7)
    junk = ["uh", "[noise]", "...", "♪", "hmm", "$", "@@", "order", "number", "-", "%", "ñ"]
    segs = [
        seg(
            rng.choice(["caller-1", "agent-1"]),
            i,
            " ".join(rng.choices(junk, k=rng.randint(0, 12))),
        )
        for i in range(200)
    ]
    card = await OfflineSummarizer().summarize(segs)
    assert isinstance(card, SummaryCard)
    assert card.to_markdown().startswith("### Call summary")


async def test_one_hour_transcript_gives_a_bounded_card(corpus: list[Call]) -> None:
    base = [s for c in corpus for s in c.reference_segments()]
    segs = [
        TranscriptSegment(s.speaker, i * 4.0, i * 4.0 + 3.5, s.text)
        for i, s in enumerate(base * 12)
    ]
    assert segs[-1].end_s > 3600
    card = await OfflineSummarizer().summarize(segs)
    assert 0 < len(card.key_facts) <= 25
    assert len(card.actions_taken) <= 6 and len(card.open_items) <= 6
    assert card.reason


async def test_fallback_card_is_marked() -> None:
    class Broken(OfflineSummarizer):
        name = "broken"

        async def _summarize_impl(self, segments: object) -> SummaryCard:  # type: ignore[override]
            raise RuntimeError("provider down")

    card = await summarize_with_fallback(
        Broken(), OfflineSummarizer(), [seg("caller-1", 0, "My order 12345 is late.")]
    )
    assert card.fallback and card.source == "offline"
    assert "Order: 12345" in card.key_facts
    assert "offline fallback" in card.to_text()
