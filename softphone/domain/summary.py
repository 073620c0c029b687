"""The summary card handed to the agent who takes over a call, and who spoke in it.

Facts about who the caller is (name, account, contact) are key facts whose
label starts with ``Caller`` (``Caller: Maria Lopez``, ``Caller account:
7730412``, ``Caller phone: 555-201-7788``); the renderings show them in
their own section, apart from the agent and the other facts. Keeping them in
``key_facts`` keeps the card's wire format unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from softphone.errors import ValidationError

Sentiment = Literal["positive", "neutral", "negative", "unknown"]
SENTIMENTS: tuple[Sentiment, ...] = ("positive", "neutral", "negative", "unknown")
CALLER_PREFIX = "Caller"


def is_caller_fact(fact: str) -> bool:
    """Whether a key fact says who the caller is (its label starts with ``Caller``)."""
    label, sep, _ = fact.partition(":")
    return bool(sep) and label.split(" ", 1)[0] == CALLER_PREFIX


def caller_line(fact: str) -> str:
    """A caller fact as shown under the card's Caller heading, its prefix dropped:
    ``Caller: Maria Lopez`` -> ``Maria Lopez``, ``Caller account: 7730`` -> ``Account: 7730``."""
    label, _, value = fact.partition(":")
    rest = label[len(CALLER_PREFIX) :].strip()
    return f"{rest[:1].upper()}{rest[1:]}:{value}" if rest else value.strip()


@dataclasses.dataclass(frozen=True)
class SpeakerRoles:
    """Who is who in a call's transcript, as the service knows it.

    The call registry knows the caller's identity and the agents' (A, B, a
    supervisor who barged in); a summarizer uses this instead of guessing
    from what people say, so the agent's own name never becomes the caller's.

    Attributes:
        caller: The caller's identity (``None``: unknown, the summarizer guesses).
        agents: Identities of the agents in the call.
        agent_names: Display names of those agents, when known (the directory's).
    """

    caller: str | None = None
    agents: frozenset[str] = frozenset()
    agent_names: tuple[str, ...] = ()

    def role_of(self, identity: str) -> Literal["caller", "agent", "unknown"]:
        """The role of the speaker ``identity``."""
        if self.caller is not None and identity == self.caller:
            return "caller"
        if identity in self.agents:
            return "agent"
        return "unknown"


@dataclasses.dataclass(frozen=True)
class SummaryCard:
    """What the next agent needs to know about a call.

    Attributes:
        reason: Why the caller called, in one sentence.
        key_facts: Names, account/order/ticket numbers, amounts, dates, phone
            numbers, e-mail addresses, as short ``Label: value`` strings;
            those labelled ``Caller ...`` say who the caller is.
        actions_taken: What the agent already did.
        open_items: What is still open.
        sentiment: The caller's mood.
        next_step: Suggested next step for the receiving agent.
        source: Which summarizer made it (``offline``, ``openai``, ``edited``).
        fallback: True when the configured summarizer failed or timed out and
            the offline one stood in.
    """

    reason: str = ""
    key_facts: tuple[str, ...] = ()
    actions_taken: tuple[str, ...] = ()
    open_items: tuple[str, ...] = ()
    sentiment: Sentiment = "unknown"
    next_step: str = ""
    source: str = "offline"
    fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        for k in ("key_facts", "actions_taken", "open_items"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SummaryCard:
        """Build and validate a card from untrusted data (JSON from a model or a peer).

        Raises:
            ValidationError: A field has the wrong type or value.
        """
        if not isinstance(data, Mapping):
            raise ValidationError("summary", "must be an object")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            v = data[f.name]
            if f.name in ("key_facts", "actions_taken", "open_items"):
                if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                    raise ValidationError(f"summary.{f.name}", "must be a list of strings")
                kw[f.name] = tuple(x.strip() for x in v if x.strip())
            elif f.name == "fallback":
                if not isinstance(v, bool):
                    raise ValidationError("summary.fallback", "must be true or false")
                kw[f.name] = v
            elif f.name == "sentiment":
                if v not in SENTIMENTS:
                    raise ValidationError(
                        "summary.sentiment", f"must be one of {', '.join(SENTIMENTS)}"
                    )
                kw[f.name] = v
            else:
                if not isinstance(v, str):
                    raise ValidationError(f"summary.{f.name}", "must be a string")
                kw[f.name] = v.strip()
        return cls(**kw)

    @property
    def caller_facts(self) -> tuple[str, ...]:
        """The key facts that say who the caller is."""
        return tuple(f for f in self.key_facts if is_caller_fact(f))

    @property
    def other_facts(self) -> tuple[str, ...]:
        """The key facts that are not about who the caller is."""
        return tuple(f for f in self.key_facts if not is_caller_fact(f))

    def to_text(self) -> str:
        """Plain-text rendering, for logs of the agent's own screen and exports."""
        lines = [f"Reason: {self.reason or '-'}"]
        for title, items in (
            ("Caller", tuple(caller_line(f) for f in self.caller_facts)),
            ("Key facts", self.other_facts),
            ("Done", self.actions_taken),
            ("Open", self.open_items),
        ):
            lines.append(f"{title}:")
            lines.extend(f"  - {x}" for x in items) if items else lines.append("  -")
        lines.append(f"Sentiment: {self.sentiment}")
        lines.append(f"Next step: {self.next_step or '-'}")
        if self.fallback:
            lines.append("(offline fallback summary)")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown rendering, for the summary card view and exports."""
        out = ["### Call summary", "", f"**Reason:** {self.reason or '-'}", ""]
        for title, items in (
            ("Caller", tuple(caller_line(f) for f in self.caller_facts)),
            ("Key facts", self.other_facts),
            ("Done", self.actions_taken),
            ("Open", self.open_items),
        ):
            out.append(f"**{title}:**")
            out.extend(f"- {x}" for x in items) if items else out.append("- none")
            out.append("")
        out.append(f"**Sentiment:** {self.sentiment}  ")
        out.append(f"**Next step:** {self.next_step or '-'}")
        if self.fallback:
            out += ["", "_Offline fallback summary: the configured summarizer was unavailable._"]
        return "\n".join(out)
