"""Summaries from an OpenAI-compatible chat-completions endpoint (the ``openai`` package).

The model is asked for JSON following the summary card's schema; the answer
is validated with :meth:`SummaryCard.from_dict`. Output that is not valid is
asked for once more, then reported as a :class:`SpeechError`. HTTP retries
(429 honouring ``retry-after``, 5xx, connection errors) are the ``openai``
client's own; a 4xx other than 429 is never retried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import openai

from softphone.config import Secret
from softphone.domain.summary import SENTIMENTS, SummaryCard
from softphone.domain.transcript import TranscriptSegment, as_text
from softphone.errors import SpeechError, ValidationError
from softphone.speech.openai_client import make_openai_client, speech_error_from_openai
from softphone.speech.summarizer import Summarizer

log = logging.getLogger(__name__)

# Long calls are cut to their beginning and end, which hold the reason and the outcome.
MAX_PROMPT_CHARS = 24000
HEAD_CHARS = 4000

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

SYSTEM_PROMPT = (
    "You summarize contact-center calls for the agent who takes the call over. "
    "Answer with one JSON object only, with these fields: reason (why the caller called, "
    "one sentence), key_facts (short strings such as 'Name: ...', 'Order: ...', "
    "'Amount: ...', 'Date: ...', 'Phone: ...', 'Email: ...', copied exactly from the call), "
    "actions_taken (what the agent already did), open_items (what is still open), "
    "sentiment (the caller's mood: positive, neutral, negative or unknown), next_step "
    "(the suggested next step for the receiving agent)."
)


def _prompt_text(segments: Sequence[TranscriptSegment]) -> str:
    text = as_text(s for s in segments if s.final)
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    tail = MAX_PROMPT_CHARS - HEAD_CHARS
    return text[:HEAD_CHARS] + "\n[...]\n" + text[-tail:]


def parse_card(content: str | None) -> SummaryCard:
    """Validate a model's answer as a summary card.

    Raises:
        ValidationError: The content is not a JSON object fitting the card.
    """
    if not content:
        raise ValidationError("summary", "the model returned no content")
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("{") :] if "{" in text else text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError("summary", "the model's answer is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
        raise ValidationError("summary", "the model's answer does not follow the card schema")
    return SummaryCard.from_dict({k: v for k, v in data.items() if k in CARD_SCHEMA["properties"]})


class OpenAISummarizer(Summarizer):
    """Summarizes with an OpenAI-compatible chat model, as structured JSON.

    Args:
        api_key: The API key (``OPENAI_API_KEY``). Local compatible servers
            that need none may get any text.
        base_url: The API base URL including ``/v1``; empty for OpenAI's own.
        model: The chat model.
        timeout_s: How long one summary may take, retries included.
        max_retries: HTTP retries the ``openai`` client makes (429, 5xx, network).

    Raises:
        ConfigError: No API key.
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
    ) -> None:
        super().__init__(timeout_s=timeout_s)
        self.model = model
        self._client = make_openai_client(
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
            what="the openai summarizer",
        )

    async def _summarize_impl(self, segments: Sequence[TranscriptSegment]) -> SummaryCard:
        transcript = _prompt_text(segments)
        messages: list[dict[str, str]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": transcript or "(no speech was transcribed)"},
        ]
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
                    *messages[:2],
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

    async def _complete(self, messages: list[dict[str, str]]) -> str | None:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "summary_card", "schema": CARD_SCHEMA, "strict": True},
            },
        }
        try:
            resp = await self._client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise speech_error_from_openai(exc, "openai summarizer") from exc
        if not resp.choices:
            return None
        content = resp.choices[0].message.content
        return content if isinstance(content, str) else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
