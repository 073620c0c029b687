"""The offline summarizer: fills the summary card from the transcript with no model.

It is the default and the fallback for every other summarizer, so it never
needs the network and never raises for odd input: an empty, very short,
one-sided, noisy or hour-long transcript each gives a sensible card.

How it reads a call:
- the caller is the speaker who is not the agent (identities naming a role
  win; otherwise the speaker using agent phrases such as "thank you for
  calling" is the agent);
- the reason is the caller's first sentence that states a need or problem;
- key facts are pattern matches over the whole call (:mod:`softphone.speech.facts`);
- what was done are the agent's "I've refunded / I have reset ..." sentences;
  what is open are promises and pending items from either side;
- sentiment weighs the caller's negative and positive words;
- the next step follows from what is open.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from softphone.domain.summary import Sentiment, SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.speech import facts
from softphone.speech.summarizer import Summarizer

MAX_FACTS = 25
MAX_ITEMS = 6
MAX_SENTENCE = 220
# Above this many segments the work moves to a thread, so the loop stays free.
THREAD_THRESHOLD = 400


def _clip(text: str, limit: int = MAX_SENTENCE) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def find_roles(segments: Sequence[TranscriptSegment]) -> tuple[str | None, str | None]:
    """Guess ``(caller, agent)`` identities among the speakers.

    Identities containing ``caller``/``customer`` or ``agent`` decide; failing
    that, the speaker who uses agent phrases most is the agent and the other
    one who spoke most is the caller.
    """
    speakers: list[str] = []
    for s in segments:
        if s.speaker not in speakers:
            speakers.append(s.speaker)
    if not speakers:
        return None, None
    caller = next((s for s in speakers if re.search(r"caller|customer|client|tel:", s, re.I)), None)
    agent = next((s for s in speakers if re.search(r"agent|support|rep", s, re.I)), None)
    if caller and agent and caller != agent:
        return caller, agent
    score = {sp: 0 for sp in speakers}
    words = {sp: 0 for sp in speakers}
    for s in segments:
        score[s.speaker] += len(facts.AGENT_CUES.findall(s.text))
        words[s.speaker] += _words(s.text)
    if agent is None:
        best = max(speakers, key=lambda sp: (score[sp], -speakers.index(sp)))
        agent = best if score[best] > 0 else None
    if caller is None:
        others = [sp for sp in speakers if sp != agent]
        if others:
            caller = max(others, key=lambda sp: words[sp])
    if agent is None and len(speakers) > 1:
        agent = next(sp for sp in speakers if sp != caller)
    return caller, agent


class OfflineSummarizer(Summarizer):
    """Summarizes a call with text patterns only; always available.

    Args:
        timeout_s: How long one summary may take.
        caller_identity: The caller's identity, when known (skips the guess).
    """

    name = "offline"

    def __init__(self, *, timeout_s: float = 10.0, caller_identity: str | None = None) -> None:
        super().__init__(timeout_s=timeout_s)
        self.caller_identity = caller_identity

    async def _summarize_impl(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        if len(segments) > THREAD_THRESHOLD:
            return await asyncio.to_thread(self.summarize_sync, segments)
        return self.summarize_sync(segments)

    def summarize_sync(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        """Make the card synchronously (pure CPU work, no I/O); never raises for odd input."""
        segs = sorted(
            (s for s in segments if s.final and s.text and s.text.strip()),
            key=lambda s: (s.start_s, s.end_s),
        )
        if not segs:
            return SummaryCard(
                reason="No speech was transcribed.",
                next_step="Greet the caller and ask how you can help.",
            )
        caller, agent = find_roles(segs)
        if self.caller_identity and any(s.speaker == self.caller_identity for s in segs):
            caller = self.caller_identity
            if agent == caller:
                agent = None
        caller_text = [s.text for s in segs if s.speaker == caller]
        agent_text = [s.text for s in segs if s.speaker != caller]
        all_text = " ".join(s.text for s in segs)

        reason = self._reason(caller_text or [all_text])
        key_facts = facts.extract_facts(all_text)[:MAX_FACTS]
        done = self._matching(agent_text, facts.ACTION_CUES)
        open_items = [
            x for x in self._matching([s.text for s in segs], facts.OPEN_CUES) if x not in done
        ][:MAX_ITEMS]
        sentiment = self._sentiment(caller_text)
        return SummaryCard(
            reason=reason,
            key_facts=tuple(key_facts),
            actions_taken=tuple(done),
            open_items=tuple(open_items),
            sentiment=sentiment,
            next_step=self._next_step(open_items, done, sentiment, bool(caller_text)),
        )

    @staticmethod
    def _reason(texts: Sequence[str]) -> str:
        first: list[str] = []
        for text in texts[:8]:
            for sentence in facts.sentences(text):
                if _words(sentence) < 3:
                    continue
                if facts.REASON_CUES.search(sentence):
                    return _clip(sentence)
                first.append(sentence)
        if first:
            return _clip(first[0])
        short = " ".join(texts).strip()
        return _clip(short) if short else "Not stated."

    @staticmethod
    def _matching(texts: Sequence[str], pattern: re.Pattern[str]) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for text in texts:
            for sentence in facts.sentences(text):
                if _words(sentence) < 3 or not pattern.search(sentence):
                    continue
                key = sentence.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(_clip(sentence))
        # Keep the latest items: in a long call they are the ones still relevant.
        return out[-MAX_ITEMS:]

    @staticmethod
    def _sentiment(caller_text: Sequence[str]) -> Sentiment:
        if not caller_text:
            return "unknown"
        neg = facts.count_matches(facts.NEGATIVE_WORDS, caller_text)
        # "thank you" at the end of a call is politeness more than joy: weigh it half.
        pos = facts.count_matches(facts.POSITIVE_WORDS, caller_text) * 0.5
        if neg >= 2 and neg > pos:
            return "negative"
        if neg > pos + 0.5:
            return "negative"
        if pos >= 1.5 and pos > neg:
            return "positive"
        return "neutral"

    @staticmethod
    def _next_step(
        open_items: Sequence[str], done: Sequence[str], sentiment: Sentiment, caller_spoke: bool
    ) -> str:
        if not caller_spoke:
            return "Ask the caller why they are calling; only one side was transcribed."
        prefix = "Acknowledge the caller's frustration, then " if sentiment == "negative" else ""
        if open_items:
            step = f"follow up on: {open_items[0]}"
        elif done:
            step = "confirm the caller is satisfied with what was done and close the call."
        else:
            step = "confirm the reason for the call and resolve it."
        text = prefix + step
        return text[0].upper() + text[1:]
