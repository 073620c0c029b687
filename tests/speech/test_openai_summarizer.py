"""The openai summarizer over real HTTP against a local server following OpenAI's API."""

from __future__ import annotations

import logging

import pytest

from softphone.config import Secret
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import ConfigError, SpeechError
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.openai_summarizer import OpenAISummarizer
from softphone.speech.summarizer import summarize_with_fallback
from tests.providers.openai_api import FakeOpenAI

pytestmark = pytest.mark.integration

KEY = "sk-test-secret-123"
SEGMENTS = [
    TranscriptSegment("agent-1", 0, 2, "Thank you for calling, how can I help?"),
    TranscriptSegment("caller-1", 2, 5, "I was charged twice for order 58213."),
]


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
