"""The openai summarizer over real HTTP against a local server following OpenAI's API."""

from __future__ import annotations

import json
import logging
import re

import pytest

from softphone.config import Secret
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import ConfigError, SpeechError, ValidationError
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.openai_summarizer import (
    CARD_SCHEMA,
    MAX_ITEMS,
    MAX_TEXT_CHARS,
    SYSTEM_PROMPT,
    OpenAISummarizer,
    parse_card,
)
from softphone.speech.summarizer import summarize_with_fallback
from tests.providers.openai_api import FakeOpenAI

pytestmark = pytest.mark.integration

KEY = "sk-test-secret-123"
SEGMENTS = [
    TranscriptSegment("agent-1", 0, 2, "Thank you for calling, how can I help?"),
    TranscriptSegment("caller-1", 2, 5, "I was charged twice for order 58213."),
]
CARD = {
    "reason": "The caller was charged twice for order 58213.",
    "key_facts": ["Name: Maria Lopez", "Order: 58213"],
    "actions_taken": ["Refunded the duplicate charge."],
    "open_items": [],
    "sentiment": "negative",
    "next_step": "Confirm the refund arrived.",
}


def make(api: FakeOpenAI, *, timeout_s: float = 10.0, max_retries: int = 2) -> OpenAISummarizer:
    return OpenAISummarizer(
        api_key=Secret(KEY),
        base_url=api.v1,
        model="gpt-test",
        timeout_s=timeout_s,
        max_retries=max_retries,
    )


async def test_summary_follows_the_schema(openai_api: FakeOpenAI) -> None:
    async with make(openai_api) as summarizer:
        card = await summarizer.summarize(SEGMENTS)
    assert card.source == "openai" and not card.fallback
    assert card.reason == openai_api.card["reason"]
    assert card.key_facts == ("Name: Maria Lopez", "Order: 58213")
    (req,) = openai_api.requests
    assert req.authorization == f"Bearer {KEY}"
    assert req.body["model"] == "gpt-test"
    assert req.body["response_format"]["type"] == "json_schema"
    assert "charged twice" in req.body["messages"][-1]["content"]


async def test_invalid_output_is_retried_once(openai_api: FakeOpenAI) -> None:
    openai_api.script("invalid", "ok")
    async with make(openai_api) as summarizer:
        card = await summarizer.summarize(SEGMENTS)
    assert card.reason == openai_api.card["reason"]
    assert [r.mode for r in openai_api.requests] == ["invalid", "ok"]
    # The retry tells the model what went wrong.
    assert len(openai_api.requests[1].body["messages"]) == 4


async def test_invalid_output_twice_is_reported(openai_api: FakeOpenAI) -> None:
    openai_api.script("invalid", "wrong_schema")
    async with make(openai_api) as summarizer:
        with pytest.raises(SpeechError, match="invalid output") as info:
            await summarizer.summarize(SEGMENTS)
    assert not info.value.retryable
    assert len(openai_api.requests) == 2


async def test_server_error_is_retried_then_reported(openai_api: FakeOpenAI) -> None:
    openai_api.always("error")
    async with make(openai_api, max_retries=1) as summarizer:
        with pytest.raises(SpeechError, match="HTTP 500") as info:
            await summarizer.summarize(SEGMENTS)
    assert info.value.retryable
    assert len(openai_api.requests) == 2


async def test_rate_limit_honours_retry_after(openai_api: FakeOpenAI) -> None:
    openai_api.script("rate_limit", "ok")
    openai_api.retry_after_s = 1
    async with make(openai_api) as summarizer:
        card = await summarizer.summarize(SEGMENTS)
    assert card.source == "openai"
    assert [r.mode for r in openai_api.requests] == ["rate_limit", "ok"]


async def test_client_error_is_not_retried(openai_api: FakeOpenAI) -> None:
    openai_api.script("bad_request", "ok")
    async with make(openai_api) as summarizer:
        with pytest.raises(SpeechError, match="HTTP 400") as info:
            await summarizer.summarize(SEGMENTS)
    assert not info.value.retryable
    assert len(openai_api.requests) == 1


async def test_hang_times_out_and_falls_back(
    openai_api: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    openai_api.always("hang")
    caplog.set_level(logging.DEBUG)
    async with make(openai_api, timeout_s=1.0) as summarizer:
        with pytest.raises(SpeechError, match="timed out") as info:
            await summarizer.summarize(SEGMENTS)
        assert info.value.retryable
        card = await summarize_with_fallback(summarizer, OfflineSummarizer(), SEGMENTS)
    assert card.fallback and card.source == "offline"
    assert "Order: 58213" in card.key_facts
    assert KEY not in caplog.text


async def test_auth_error_never_shows_the_key(openai_api: FakeOpenAI) -> None:
    summarizer = OpenAISummarizer(api_key=Secret("sk-wrong-key-999"), base_url=openai_api.v1)
    async with summarizer:
        with pytest.raises(SpeechError) as info:
            await summarizer.summarize(SEGMENTS)
    assert "401" in str(info.value) and "sk-wrong-key-999" not in str(info.value)
    assert not info.value.retryable


def test_a_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAISummarizer(api_key=None)


async def test_json_object_mode_sends_the_bounded_schema(openai_api: FakeOpenAI) -> None:
    async with OpenAISummarizer(
        api_key=Secret(KEY),
        base_url=openai_api.v1,
        model="local",
        json_mode="json_object",
        max_tokens=300,
    ) as summarizer:
        card = await summarizer.summarize(SEGMENTS)
    assert card.reason == openai_api.card["reason"]
    (req,) = openai_api.requests
    fmt = req.body["response_format"]
    assert fmt["type"] == "json_object"
    assert fmt["schema"]["properties"]["key_facts"]["maxItems"] == MAX_ITEMS
    assert fmt["schema"]["required"] == CARD_SCHEMA["required"]
    assert req.body["max_tokens"] == 300


def test_text_around_the_object_is_ignored() -> None:
    answer = json.dumps(CARD)
    for content in (f"```json\n{answer}\n```", f"Here you go: {answer} Hope it helps!"):
        assert parse_card(content).key_facts == ("Name: Maria Lopez", "Order: 58213")


def test_an_answer_cut_short_keeps_only_complete_values() -> None:
    answer = json.dumps(CARD)
    cut = answer[: answer.index("Order: 58") + len("Order: 58")]
    card = parse_card(cut)
    assert card.reason == CARD["reason"]
    # The half-written "Order: 58" is dropped, never kept as a wrong number.
    assert card.key_facts == ("Name: Maria Lopez",)
    assert card.actions_taken == () and card.sentiment == "unknown"


def test_a_looping_answer_is_bounded() -> None:
    looping = dict(CARD, key_facts=["Order: 58213"] * 50 + [f"Fact {i}" for i in range(50)])
    looping["reason"] = "x" * 5000
    card = parse_card(json.dumps(looping))
    assert card.key_facts[0] == "Order: 58213" and card.key_facts.count("Order: 58213") == 1
    assert len(card.key_facts) == MAX_ITEMS and len(card.reason) == MAX_TEXT_CHARS


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("", "no content"),
        ("The caller was unhappy.", "not JSON"),
        ("[1, 2]", "not JSON"),
        ('{"reason": 42}', "card schema (reason)"),
        ('{"reason": ""}', "card schema (reason)"),
        ('{"key_facts": ["Order: 58213"]}', "card schema (reason)"),
        ('{"reason": "Refund.", "key_facts": "Order: 58213"}', "card schema (key_facts)"),
        ('{"reason": "Refund.", "sentiment": "furious"}', "card schema (sentiment)"),
    ],
)
def test_an_unusable_answer_is_rejected(content: str, error: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(error)):
        parse_card(content)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="json_mode"):
        OpenAISummarizer(api_key=Secret(KEY), json_mode="grammar")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_tokens"):
        OpenAISummarizer(api_key=Secret(KEY), max_tokens=10)


async def test_without_a_system_role_the_instructions_open_the_user_turn(
    openai_api: FakeOpenAI,
) -> None:
    async with OpenAISummarizer(
        api_key=Secret(KEY), base_url=openai_api.v1, system_role=False
    ) as summarizer:
        await summarizer.summarize(SEGMENTS)
    (req,) = openai_api.requests
    (message,) = req.body["messages"]
    assert message["role"] == "user"
    assert message["content"].startswith(SYSTEM_PROMPT)
    assert message["content"].endswith("caller-1: I was charged twice for order 58213.")
