"""Patterns that pull key facts out of a call transcript, for the offline summarizer.

Everything here is plain text processing (no model, no I/O): names, account,
order and ticket numbers, amounts, dates, phone numbers and e-mail addresses,
plus the cue phrases that mark what the agent did, what is still open and how
the caller feels. Each pattern is linear in the text, so a one-hour transcript
is handled in milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
    "customer": "Customer",
    "serial": "Serial",
    "contract": "Contract",
    "subscription": "Subscription",
    "card": "Card",
}
_ID_RE = re.compile(
    r"\b(?P<kind>" + "|".join(_ID_KINDS) + r")"
    r"(?:\s+(?:number|no\.?|id|code|#))?(?:\s+(?:is|was|of|in|ending\s+in))?[\s:#]*"
    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,}(?:\s[0-9]{2,})*)\b",
    re.IGNORECASE,
)
_CODE_RE = re.compile(r"\b(?=[A-Z0-9-]*\d)(?=[A-Z0-9-]*[A-Z])[A-Z]{1,4}-?[0-9][A-Z0-9-]{2,}\b")
_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_SPOKEN_EMAIL_RE = re.compile(
    r"\b([a-z0-9._-]+)\s+at\s+([a-z0-9-]+)\s+dot\s+(com|net|org|co|io|de|uk)\b", re.IGNORECASE
)
_PHONE_RE = re.compile(
    r"(?<![\w.])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"
)
_AMOUNT_RE = re.compile(
    r"(?:[$€£]\s?\d[\d,]*(?:\.\d{1,2})?)"
    r"|(?:\b\d[\d,]*(?:\.\d{1,2})?\s?(?:dollars?|euros?|pounds?|usd|eur|gbp|cents)\b)",
    re.IGNORECASE,
)
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_DATE_RE = re.compile(
    rf"\b(?:(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})(?:,?\s+\d{{4}})?"
    r"|\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4})\b",
    re.IGNORECASE,
)
_NAME_WORD = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_NAME_RE = re.compile(
    r"(?:[Mm]y name is|[Tt]his is|[Ii]t'?s|[Ii] am|[Ii]'m|[Ss]peaking with|[Nn]ame on the account is"
    r"|[Uu]nder the name(?: of)?|[Aa]ccount holder is)\s+"
    rf"(?P<name>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"
)
# Capitalised words after "I'm" that are not names.
_NOT_NAMES = {
    "Sorry",
    "Calling",
    "Not",
    "So",
    "Just",
    "Still",
    "Really",
    "Very",
    "Glad",
    "Happy",
    "Afraid",
    "Looking",
    "Trying",
    "Going",
    "Here",
    "Fine",
    "Good",
    "Great",
    "Okay",
    "Ok",
    "Sure",
    "The",
    "A",
    "An",
    "Your",
    "My",
    "That",
    "There",
    "Checking",
    "Having",
    "Getting",
    "Now",
    "Also",
}
_SENTENCE_RE = re.compile(r"(?:[^.!?]|[.!?](?=[\w@$]))+[.!?]*")

REASON_CUES = re.compile(
    r"\b(calling (?:about|because|to|regarding)|i(?:'m| am) calling|i (?:want|need|would like|'d like)"
    r"|i have (?:a|an) (?:problem|issue|question)|problem|issue|trouble|can'?t|cannot|won'?t"
    r"|doesn'?t|didn'?t|wasn'?t|never (?:arrived|received|got)|charged|broken|not working"
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
)
ACTION_CUES = re.compile(
    r"\b(?:(?:i(?:'ve| have)|we(?:'ve| have)|(?:it|that|this)(?:'s| has) been)"
    r"\s+(?:also\s+|now\s+|already\s+|just\s+)?(?:[a-z]{3,}ed|" + _IRREGULAR_DONE + r")"
    r"|(?:i|we)\s+(?:just\s+|also\s+|went ahead and\s+)?(?:" + _DONE_VERBS + r"))\b",
    re.IGNORECASE,
)
OPEN_CUES = re.compile(
    r"\b(?:i(?:'ll| will)|we(?:'ll| will)|you(?:'ll| will) (?:get|receive|need|have to|see)"
    r"|will (?:be|take|arrive|follow|call|reach|send|get)|still|pending|waiting|follow[- ]up"
    r"|call (?:you )?back|within \w+ (?:business )?(?:days|hours)|not yet|haven'?t|need to"
    r"|has to|have to|escalat\w*|next week|tomorrow|open)\b",
    re.IGNORECASE,
)
NEGATIVE_WORDS = re.compile(
    r"\b(frustrat\w*|angry|upset|annoy\w*|ridiculous|terrible|awful|unacceptable|disappoint\w*"
    r"|worst|horrible|furious|fed up|again|still not|waste|useless|complain\w*|not happy|unhappy"
    r"|worried|stressful|sick of|third time|second time|nobody|never)\b",
    re.IGNORECASE,
)
POSITIVE_WORDS = re.compile(
    r"\b(thanks?|thank you|great|perfect|appreciate\w*|wonderful|excellent|happy|helpful"
    r"|awesome|brilliant|lovely|fantastic|relieved|glad|good)\b",
    re.IGNORECASE,
)
AGENT_CUES = re.compile(
    r"\b(thank you for calling|thanks for calling|how (?:can|may) i help|my name is \w+ and i"
    r"|let me (?:check|look|pull)|i can see|i(?:'ve| have) (?:refunded|reset|sent|issued)"
    r"|is there anything else)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    """Split ``text`` into trimmed sentences (at ``.``, ``!`` and ``?``)."""
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]


def _norm_id(value: str) -> str:
    return re.sub(r"\s+", "", value).upper()


def extract_facts(text: str) -> list[str]:
    """Key facts found in ``text``, labelled, in order of first mention, deduplicated.

    Labels are ``Name``, ``Account``/``Order``/... (identifiers), ``Amount``,
    ``Date``, ``Phone`` and ``Email``.
    """
    # Speech recognisers write long numbers with thousands separators ("58,213").
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    found: list[tuple[int, str]] = []
    seen: set[str] = set()
    ids: set[str] = set()

    def add(pos: int, label: str, value: str, key: str | None = None) -> None:
        k = (key or value).lower()
        if k in seen:
            return
        seen.add(k)
        found.append((pos, f"{label}: {value}"))

    for m in _NAME_RE.finditer(text):
        words = m.group("name").split()
        while words and words[0] in _NOT_NAMES:
            words.pop(0)
        while words and words[-1] in _NOT_NAMES:
            words.pop()
        if words:
            add(m.start("name"), "Name", " ".join(words))
    for m in _EMAIL_RE.finditer(text):
        add(m.start(), "Email", m.group(0))
    for m in _SPOKEN_EMAIL_RE.finditer(text):
        email = f"{m.group(1)}@{m.group(2)}.{m.group(3)}".lower()
        add(m.start(), "Email", email)
    for m in _PHONE_RE.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        add(m.start(), "Phone", m.group(0).strip(), key=f"phone:{digits}")
        ids.add(digits)
    for m in _ID_RE.finditer(text):
        value = _norm_id(m.group("value"))
        if value in ids or re.sub(r"\D", "", value) in ids:
            continue
        ids.add(value)
        add(m.start(), _ID_KINDS[m.group("kind").lower()], value, key=f"id:{value}")
    for m in _CODE_RE.finditer(text):
        value = _norm_id(m.group(0))
        if value not in ids:
            ids.add(value)
            add(m.start(), "Reference", value, key=f"id:{value}")
    for m in _AMOUNT_RE.finditer(text):
        add(m.start(), "Amount", m.group(0).strip())
    for m in _DATE_RE.finditer(text):
        add(m.start(), "Date", m.group(0).strip())
    found.sort(key=lambda x: x[0])
    return [f for _, f in found]


def count_matches(pattern: re.Pattern[str], texts: Iterable[str]) -> int:
    """How many times ``pattern`` matches across ``texts``."""
    return sum(len(pattern.findall(t)) for t in texts)
