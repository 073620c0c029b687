"""The offline summarizer: fills the summary card from the transcript with no network.

It is the default and the fallback for every other summarizer, so it never
needs the network and never raises for odd input: an empty, very short,
one-sided, noisy or hour-long transcript each gives a sensible card.

How it reads a call:
- who is the caller and who the agent comes from the service
  (:class:`~softphone.domain.summary.SpeakerRoles`, or ``caller_identity``);
  failing that, identities naming a role, then agent phrases such as "thank
  you for calling";
- key facts come from spaCy's named entities and text2num's spoken numbers
  plus a few patterns (:mod:`softphone.speech.facts`), read per speaker so
  the caller's name, account and contact are told apart from the agent's
  own name and from the other facts;
- the reason is the caller's first sentence that states a need or problem
  (and a second issue they raise later);
- what was done are the agent's "I've refunded / I have opened ..." sentences;
  what is open are promises and pending items from either side;
- sentiment weighs the caller's negative and positive words;
- the next step follows from what is open.

With the NER model, :meth:`OfflineSummarizer.summarize` makes the card in
a worker *process* (:func:`start_entity_worker`, one per process, started at
the first summary or earlier, e.g. when an agent's call begins): spaCy holds
the GIL for long stretches while it loads and tags, which stalled an app's
event loop by 50-220 ms at a transfer's start when it ran in a thread. The
model loads there once (seconds); a summary waits for it at most half its
timeout, else uses the patterns only, in a worker thread (the model goes on
loading for the next one); a worker that died is started again. Nothing runs
on the event loop. :meth:`OfflineSummarizer.summarize_sync` (benchmarks,
scripts) loads the model in its own process instead
(:func:`preload_entity_model`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

from softphone.domain.summary import Sentiment, SpeakerRoles, SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.speech import facts
from softphone.speech.summarizer import Summarizer

if TYPE_CHECKING:
    from spacy.language import Language

log = logging.getLogger(__name__)

MAX_FACTS = 25
MAX_ITEMS = 6
MAX_SENTENCE = 220
# The share of the timeout a summary may wait for the NER model to load.
MODEL_WAIT_SHARE = 0.5

_load_lock = threading.Lock()
_load_future: concurrent.futures.Future[Language] | None = None
_SECOND_ISSUE = re.compile(
    r"\b(also|another|second(?: thing)?|one more thing|while i'?m at it|as well|too)\b", re.I
)


def preload_entity_model() -> concurrent.futures.Future[Language]:
    """Start loading the NER model in a background thread (once per process).

    Returns the future of the loaded pipeline; call it at start-up so the
    first summary does not wait.
    """
    global _load_future
    with _load_lock:
        if _load_future is None:
            future: concurrent.futures.Future[Language] = concurrent.futures.Future()

            def load() -> None:
                try:
                    future.set_result(facts.load_entity_model())
                except BaseException as exc:
                    log.warning("NER model could not be loaded; facts from patterns only")
                    future.set_exception(exc)

            threading.Thread(target=load, name="ner-model-load", daemon=True).start()
            _load_future = future
        return _load_future


_worker_lock = threading.Lock()
_worker: ProcessPoolExecutor | None = None
_worker_ready: concurrent.futures.Future[bool] | None = None


def _worker_init(parent: int) -> None:  # pragma: no cover - runs in the worker
    """The worker dies with the process that started it, even one killed with SIGKILL."""
    from softphone.infra.local_server import _die_with_parent

    _die_with_parent()
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)


def _load_in_worker() -> bool:
    facts.load_entity_model()
    return True


def _summarize_in_worker(
    segments: list[TranscriptSegment], roles: SpeakerRoles | None, caller_identity: str | None
) -> SummaryCard:
    summarizer = OfflineSummarizer(caller_identity=caller_identity)
    return summarizer._summarize(segments, roles, facts.load_entity_model())


def start_entity_worker() -> tuple[ProcessPoolExecutor, concurrent.futures.Future[bool]]:
    """The NER worker process and the future of its model being loaded (started once).

    A worker that died (killed, out of memory) is replaced by a new one; the
    worker dies with this process (``PR_SET_PDEATHSIG``: call this from a
    thread that lives as long as the process, such as the event loop's).
    Non-blocking: it only starts the process (spawned, not forked: the app has
    threads and Qt) and queues the model's loading.
    """
    global _worker, _worker_ready
    with _worker_lock:
        failed = _worker_ready is not None and _worker_ready.done() and _worker_ready.exception()
        if _worker is None or _worker_ready is None or failed:
            _forget_worker_locked()
            _worker = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
            _worker_ready = _worker.submit(_load_in_worker)
        return _worker, _worker_ready


def stop_entity_worker() -> None:
    """Stop the NER worker process, if one runs.

    A summary under way finishes first; queued ones are dropped. Blocking:
    call it off the event loop. For a process whose exit hooks never run:
    uvicorn ends on SIGTERM by raising the signal again once it has shut
    down, so the pool's own hook would never stop the worker, and the
    resource tracker would report its semaphores leaked.
    """
    global _worker, _worker_ready
    with _worker_lock:
        worker, _worker, _worker_ready = _worker, None, None
    if worker is not None:
        worker.shutdown(wait=True, cancel_futures=True)


def _forget_worker(worker: ProcessPoolExecutor) -> None:
    """Drop ``worker`` (it died) so that the next summary starts a new one."""
    with _worker_lock:
        if _worker is worker:
            _forget_worker_locked()


def _forget_worker_locked() -> None:
    global _worker, _worker_ready
    if _worker is not None:
        _worker.shutdown(wait=False, cancel_futures=True)
    _worker = _worker_ready = None


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def _key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _fit(sentence: str, pattern: re.Pattern[str] | None = None) -> str:
    """``sentence`` whole, or its clause that matters when it is very long; never cut."""
    sentence = re.sub(r"\s+", " ", sentence).strip()
    if len(sentence) <= MAX_SENTENCE:
        return sentence
    clauses = [c.strip() for c in re.split(r"[,;]\s+|\s+(?:and|but|so)\s+", sentence)]
    for clause in clauses:
        if _words(clause) >= 3 and (pattern is None or pattern.search(clause)):
            clause = clause[0].upper() + clause[1:]
            return clause if clause[-1] in ".!?" else clause + "."
    return sentence


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
    """Summarizes a call on this machine (NER, number parsing, cue phrases); always available.

    Args:
        timeout_s: How long one summary may take.
        caller_identity: The caller's identity, when known (skips the guess);
            ``roles`` given to :meth:`summarize` take precedence.
        ner: Use the NER model (in the worker process of
            :func:`start_entity_worker`); ``False``: patterns only.
    """

    name = "offline"

    def __init__(
        self, *, timeout_s: float = 10.0, caller_identity: str | None = None, ner: bool = True
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        self.caller_identity = caller_identity
        self.ner = ner

    async def _summarize_impl(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        return await self._summarize_with_roles(segments, None)

    async def _summarize_with_roles(
        self, segments: Sequence[TranscriptSegment], roles: SpeakerRoles | None
    ) -> SummaryCard:
        if self.ner:
            worker, ready = start_entity_worker()
            try:
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(ready)), self.timeout_s * MODEL_WAIT_SHARE
                )
                job = worker.submit(
                    _summarize_in_worker, list(segments), roles, self.caller_identity
                )
                return await asyncio.wrap_future(job)
            except TimeoutError:
                log.warning("NER model still loading; facts from patterns only")
            except Exception:
                # The model failed to load, or the worker died: this card from the
                # patterns; the next summary starts a new worker.
                log.warning("NER worker failed; facts from patterns only", exc_info=True)
                _forget_worker(worker)
        return await asyncio.to_thread(self._summarize, segments, roles, None)

    def summarize_sync(
        self, segments: Sequence[TranscriptSegment], roles: SpeakerRoles | None = None
    ) -> SummaryCard:
        """Make the card synchronously (CPU work, loads the model if needed; no event loop).

        Never raises for odd input. Blocking: call it from a worker thread.
        """
        nlp: Language | None = None
        if self.ner:
            try:
                nlp = preload_entity_model().result()
            except Exception:
                nlp = None
        return self._summarize(segments, roles, nlp)

    def _roles(
        self, segs: Sequence[TranscriptSegment], roles: SpeakerRoles | None
    ) -> tuple[str | None, set[str]]:
        speakers = {s.speaker for s in segs}
        caller, agent = find_roles(segs)
        known = roles.caller if roles is not None and roles.caller else self.caller_identity
        if known:
            caller = known  # the service knows; absent from the transcript = one-sided call
            agent = None if agent == caller else agent
        agents = set(roles.agents) if roles is not None else set()
        if agent is not None:
            agents.add(agent)
        if caller is not None and (known or len(speakers) > 1):
            agents |= {sp for sp in speakers if sp != caller}
        agents.discard(caller or "")
        return caller, agents

    def _summarize(
        self,
        segments: Sequence[TranscriptSegment],
        roles: SpeakerRoles | None,
        nlp: Language | None,
    ) -> SummaryCard:
        segs = sorted(
            (s for s in segments if s.final and s.text and s.text.strip()),
            key=lambda s: (s.start_s, s.end_s),
        )
        if not segs:
            return SummaryCard(
                reason="No speech was transcribed.",
                next_step="Greet the caller and ask how you can help.",
            )
        caller, agents = self._roles(segs, roles)
        turns: list[facts.Turn] = []
        speakers: list[str] = []
        for s in segs:
            role: facts.Role = (
                "caller" if s.speaker == caller else "agent" if s.speaker in agents else "unknown"
            )
            if speakers and speakers[-1] == s.speaker:
                turns[-1] = facts.Turn(role, f"{turns[-1].text} {s.text.strip()}")
            else:
                turns.append(facts.Turn(role, s.text.strip()))
                speakers.append(s.speaker)
        digits = [facts.Turn(t.role, facts.spoken_to_digits(t.text)) for t in turns]
        names = roles.agent_names if roles else ()
        try:
            call_facts = facts.extract_call_facts(
                digits, nlp=nlp, agent_names=names, converted=True
            )
        except Exception:
            # The model must never cost the card: fall back to the patterns.
            log.exception("NER failed; facts from patterns only")
            call_facts = facts.extract_call_facts(digits, agent_names=names, converted=True)
        caller_text = [t.text for t in digits if t.role == "caller"]
        agent_text = [t.text for t in digits if t.role != "caller"]

        reason = self._reason(caller_text or [t.text for t in digits])
        done = self._matching(agent_text, facts.ACTION_CUES)
        skip = {_key(x) for x in done} | {_key(x) for x in facts.sentences(reason)}
        open_items = [
            x
            for x in self._matching([t.text for t in digits], facts.OPEN_CUES)
            if _key(x) not in skip and not x.endswith("?")  # a question asked is no open item
        ][-MAX_ITEMS:]
        sentiment = self._sentiment(caller_text)
        return SummaryCard(
            reason=reason,
            key_facts=tuple(call_facts.all()[:MAX_FACTS]),
            actions_taken=tuple(done),
            open_items=tuple(open_items),
            sentiment=sentiment,
            next_step=self._next_step(open_items, done, sentiment, bool(caller_text)),
        )

    @staticmethod
    def _reason(texts: Sequence[str]) -> str:
        first: list[str] = []
        needs: list[str] = []
        for k, text in enumerate(texts):
            said = [x for x in facts.sentences(text) if _words(x) >= 3]
            for j, sentence in enumerate(said):
                # A need, a problem, or a complaint ("... again!") states the reason.
                cue = facts.REASON_CUES.search(sentence) or (
                    not needs and facts.NEGATIVE_WORDS.search(sentence)
                )
                if cue:
                    first_need = not needs and k < 8
                    second = bool(needs) and len(needs) < 2 and _SECOND_ISSUE.search(sentence)
                    if first_need or second:
                        needs.append(_fit(sentence, facts.REASON_CUES))
                        # A short follow-up in the same breath belongs to it.
                        nxt = said[j + 1] if j + 1 < len(said) else ""
                        if first_need and nxt and _words(nxt) <= 8 and not nxt.endswith("?"):
                            needs.append(nxt)
                elif k < 8:
                    first.append(sentence)
        if needs:
            return " ".join(dict.fromkeys(needs))
        if first:
            return _fit(first[0])
        short = " ".join(texts).strip()
        return _fit(short) if short else "Not stated."

    @staticmethod
    def _matching(texts: Iterable[str], pattern: re.Pattern[str]) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for text in texts:
            for sentence in facts.sentences(text):
                if _words(sentence) < 3 or not pattern.search(sentence):
                    continue
                if facts.is_introduction(sentence):
                    continue  # "Parcelpoint, Felix here.": a greeting, not an item
                item = _fit(sentence, pattern)
                key = _key(item)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        # Keep the latest items: in a long call they are the ones still relevant.
        return out[-MAX_ITEMS:]

    @staticmethod
    def _sentiment(caller_text: Sequence[str]) -> Sentiment:
        if not caller_text:
            return "unknown"
        neg = facts.count_matches(facts.NEGATIVE_WORDS, caller_text)
        # "thank you" at the end of a call is politeness more than joy: weigh it half.
        pos = facts.count_matches(facts.POSITIVE_WORDS, caller_text) + 0.5 * facts.count_matches(
            facts.POLITE_WORDS, caller_text
        )
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
            n = len(open_items)
            step = "follow up on the open item." if n == 1 else f"follow up on the {n} open items."
        elif done:
            step = "confirm the caller is satisfied with what was done and close the call."
        else:
            step = "confirm the reason for the call and resolve it."
        text = prefix + step
        return text[0].upper() + text[1:]
