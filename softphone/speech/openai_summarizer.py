"""Summaries from an OpenAI-compatible chat-completions endpoint (the ``openai`` package).

The model is asked for JSON following the summary card's schema, in one of
two ways (``json_mode``), since servers differ in what they take:

- ``json_schema``: OpenAI's structured outputs
  (``response_format={"type": "json_schema", "json_schema": {..., "strict": true}}``);
- ``json_object``: JSON mode with the schema attached
  (``{"type": "json_object", "schema": ...}``), what llama.cpp's Python
  server (``llama_cpp.server``) turns into a grammar. The schema then also
  bounds list sizes, so a small model cannot loop on one list until it
  runs out of tokens.

The answer is parsed leniently and validated strictly: text around the JSON
object (code fences, a preamble) is ignored; an object cut short (the answer
hit ``max_tokens``) is read up to its last complete value
(``pydantic_core.from_json(allow_partial=True)``, so a half-written fact is
dropped, never kept); fields are then validated with pydantic, duplicates
dropped and lists and strings bounded. An answer with no usable ``reason``
is asked for once more, then reported as a :class:`SpeechError`, which
:func:`~softphone.speech.summarizer.summarize_with_fallback` turns into the
offline summary. HTTP retries (429 honouring ``retry-after``, 5xx,
connection errors) are the ``openai`` client's own; a 4xx other than 429 is
never retried.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

import openai
import pydantic
import pydantic_core

from softphone.config import Secret
from softphone.domain.summary import SENTIMENTS, Sentiment, SummaryCard
from softphone.domain.transcript import TranscriptSegment, as_text
from softphone.errors import ConfigError, SpeechError, ValidationError
from softphone.speech.openai_client import make_openai_client, speech_error_from_openai
from softphone.speech.summarizer import Summarizer

log = logging.getLogger(__name__)

JsonMode = Literal["json_schema", "json_object"]
JSON_MODES: tuple[JsonMode, ...] = ("json_schema", "json_object")

# Long calls are cut to their beginning and end, which hold the reason and the outcome.
MAX_PROMPT_CHARS = 24000
HEAD_CHARS = 4000
# What a card keeps of an answer: a model that loops repeats one item many times.
MAX_ITEMS = 10
MAX_TEXT_CHARS = 300

CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "reason",
        "key_facts",
        "actions_taken",
        "open_items",
        "sentiment",
        "next_step",
    ],
    "properties": {
        "reason": {"type": "string"},
        "key_facts": {"type": "array", "items": {"type": "string"}},
        "actions_taken": {"type": "array", "items": {"type": "string"}},
        "open_items": {"type": "array", "items": {"type": "string"}},
        "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
        "next_step": {"type": "string"},
    },
}


def bounded_schema(schema: dict[str, Any] = CARD_SCHEMA) -> dict[str, Any]:
    """``schema`` with every list bounded (``maxItems``).

    For servers that turn the schema into a grammar: the bound then holds
    during generation. Strings are not bounded there: a ``maxLength`` of a
    few hundred becomes as many nested grammar rules, which made llama.cpp
    generate 2.7 times slower (measured); the parsed card cuts them instead.
    (OpenAI's strict mode is sent the plain schema.)
    """
    out = copy.deepcopy(schema)
    for prop in out["properties"].values():
        if prop["type"] == "array":
            prop["maxItems"] = MAX_ITEMS
    return out


SYSTEM_PROMPT = (
    "You summarize contact-center calls for the agent who takes the call over. "
    "Answer with one JSON object only, with these fields: reason (why the caller called, "
    "one sentence), key_facts (short strings such as 'Name: ...', 'Order: ...', "
    "'Amount: ...', 'Date: ...', 'Phone: ...', 'Email: ...', copied exactly from the call), "
    "actions_taken (what the agent already did), open_items (what is still open), "
    "sentiment (the caller's mood: positive, neutral, negative or unknown), next_step "
    "(the suggested next step for the receiving agent)."
)


class _CardAnswer(pydantic.BaseModel):
    """A model's answer as far as the card takes it: strict types, unknown keys ignored.

    Only ``reason`` is required: the lists and the rest may be missing from
    an answer that was cut short.
    """

    model_config = pydantic.ConfigDict(strict=True, extra="ignore")

    reason: str = pydantic.Field(min_length=1)
    key_facts: list[str] = []
    actions_taken: list[str] = []
    open_items: list[str] = []
    sentiment: Sentiment = "unknown"
    next_step: str = ""


def _bounded_items(items: list[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        text = item.strip()[:MAX_TEXT_CHARS]
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            out.append(text)
    return out[:MAX_ITEMS]


def _json_object(text: str) -> tuple[Any, bool]:
    """The first JSON object in ``text`` and whether it had to be completed.

    Raises:
        ValidationError: There is no object, or not even the start of one.
    """
    start = text.find("{")
    if start < 0:
        raise ValidationError("summary", "the model's answer is not JSON")
    body = text[start:]
    try:
        return json.JSONDecoder().raw_decode(body)[0], False
    except json.JSONDecodeError:
        pass
    try:
        # Cut short: keep every complete value, drop the one being written.
        return pydantic_core.from_json(body, allow_partial=True), True
    except ValueError as exc:
        raise ValidationError("summary", "the model's answer is not JSON") from exc


def parse_card(content: str | None) -> SummaryCard:
    """Validate a model's answer as a summary card, repairing what can be repaired.

    Raises:
        ValidationError: The content holds no JSON object with a usable
            ``reason``, or a field has the wrong type.
    """
    if not content or not content.strip():
        raise ValidationError("summary", "the model returned no content")
    data, partial = _json_object(content)
    if not isinstance(data, dict):
        raise ValidationError("summary", "the model's answer is not a JSON object")
    try:
        answer = _CardAnswer.model_validate(data)
    except pydantic.ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"][:1]) for e in exc.errors()})
        raise ValidationError(
            "summary",
            "the model's answer does not follow the card schema"
            + (f" ({', '.join(fields)})" if fields else ""),
        ) from exc
    if partial:
        log.warning("summarizer output was cut short; kept its complete fields")
    return SummaryCard.from_dict(
        {
            "reason": answer.reason.strip()[:MAX_TEXT_CHARS],
            "key_facts": _bounded_items(answer.key_facts),
            "actions_taken": _bounded_items(answer.actions_taken),
            "open_items": _bounded_items(answer.open_items),
            "sentiment": answer.sentiment,
            "next_step": answer.next_step.strip()[:MAX_TEXT_CHARS],
        }
    )


def _prompt_text(segments: Sequence[TranscriptSegment]) -> str:
    text = as_text(s for s in segments if s.final)
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    tail = MAX_PROMPT_CHARS - HEAD_CHARS
    return text[:HEAD_CHARS] + "\n[...]\n" + text[-tail:]


class OpenAISummarizer(Summarizer):
    """Summarizes with an OpenAI-compatible chat model, as structured JSON.

    Args:
        api_key: The API key (``OPENAI_API_KEY``). Local compatible servers
            that need none may get any text.
        base_url: The API base URL including ``/v1``; empty for OpenAI's own.
        model: The chat model.
        timeout_s: How long one summary may take, retries included.
        max_retries: HTTP retries the ``openai`` client makes (429, 5xx, network).
        json_mode: How the schema is asked for: ``json_schema`` (OpenAI's
            structured outputs) or ``json_object`` (JSON mode with the schema
            attached, as llama.cpp's Python server takes it).
        max_tokens: The longest answer asked for, in tokens; bounds the time
            a local server spends on one summary.
        system_role: Whether the model takes a system message; if not (Gemma's
            chat format drops it), the instructions open the user's message.

    Raises:
        ConfigError: No API key, or an unknown ``json_mode``.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: Secret | None,
        base_url: str = "",
        model: str = "gpt-4o-mini",
        timeout_s: float = 10.0,
        max_retries: int = 2,
        json_mode: JsonMode = "json_schema",
        max_tokens: int = 1024,
        system_role: bool = True,
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        if json_mode not in JSON_MODES:
            raise ConfigError(f"json_mode must be one of {', '.join(JSON_MODES)}")
        if max_tokens < 64:
            raise ConfigError("max_tokens must be at least 64 for a summary card")
        self.model = model
        self.json_mode: JsonMode = json_mode
        self.max_tokens = max_tokens
        self.system_role = system_role
        self._client = make_openai_client(
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
            what="the openai summarizer",
        )

    async def _summarize_impl(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        prompt = self._messages(_prompt_text(segments) or "(no speech was transcribed)")
        messages = prompt
        last: ValidationError | None = None
        for attempt in range(2):  # invalid output is asked for once more
            content = await self._complete(messages)
            try:
                return parse_card(content)
            except ValidationError as exc:
                last = exc
                log.warning(
                    "summarizer output invalid",
                    extra={"attempt": attempt + 1, "error": exc.message},
                )
                messages = [
                    *prompt,
                    {"role": "assistant", "content": (content or "")[:2000]},
                    {
                        "role": "user",
                        "content": "That was not valid. Answer with the JSON object only.",
                    },
                ]
        assert last is not None
        raise SpeechError(
            f"openai summarizer returned invalid output twice: {last.message}", retryable=False
        ) from last

    def _messages(self, transcript: str) -> list[dict[str, str]]:
        if self.system_role:
            return [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": transcript},
            ]
        return [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\nThe call:\n{transcript}"}]

    def _response_format(self) -> dict[str, Any]:
        if self.json_mode == "json_object":
            return {"type": "json_object", "schema": bounded_schema()}
        return {
            "type": "json_schema",
            "json_schema": {"name": "summary_card", "schema": CARD_SCHEMA, "strict": True},
        }

    async def _complete(self, messages: list[dict[str, str]]) -> str | None:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "response_format": self._response_format(),
        }
        try:
            resp = await self._client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise speech_error_from_openai(exc, "openai summarizer") from exc
        if not resp.choices:
            return None
        choice = resp.choices[0]
        if choice.finish_reason == "length":
            log.warning("summarizer answer hit max_tokens", extra={"max_tokens": self.max_tokens})
        content = choice.message.content
        return content if isinstance(content, str) else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
