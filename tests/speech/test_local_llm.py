"""The openai summarizer against a real local LLM: llama.cpp's server with Gemma 3 270M.

The server is ``llama_cpp.server`` from the pinned, once-built environment
(:mod:`softphone.infra.llm_server`), started on a free loopback port with a
random API key. Nothing here is scripted: the model writes the answers, the
server's grammar holds them to the card's schema, timeouts and a server
killed in the middle of a request are real, and the fallback is the real
offline summarizer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from softphone.config import Secret
from softphone.domain.summary import SENTIMENTS
from softphone.errors import LocalServerError, SpeechError, ValidationError
from softphone.infra.llm_server import LlmEnvironment, LocalLlmServer, find_llm_environment
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.openai_summarizer import (
    MAX_ITEMS,
    SYSTEM_PROMPT,
    OpenAISummarizer,
    bounded_schema,
    parse_card,
)
from softphone.speech.summarizer import summarize_with_fallback
from tests.speech.corpus import Call

pytestmark = pytest.mark.integration

CALL_ID = "01_double_charge"
# Generous: the machine is shared and a summary takes seconds to tens of seconds.
SLOW_S = 300.0


@pytest.fixture(scope="module")
def llm_environment() -> LlmEnvironment:
    """The pinned llama-cpp-python build and model, built once by ``./dev setup``.

    Its build takes far longer than a test may, so a missing one is a
    failure that says how to build it, not a build inside a test.
    """
    environment = find_llm_environment()
    if environment is None:
        pytest.fail(
            "the local LLM environment is not built: run `./dev setup` "
            "(or `python -m softphone.infra.llm_server`) once"
        )
    return environment


@pytest.fixture(scope="module")
async def llm_server(
    llm_environment: LlmEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalLlmServer]:
    """One real llama.cpp server for the module."""
    async with LocalLlmServer(
        environment=llm_environment, work_dir=tmp_path_factory.mktemp("llm")
    ) as server:
        yield server


@pytest.fixture(scope="module")
def call(corpus: list[Call]) -> Call:
    """A corpus call with names, an order number, an amount and a date."""
    return next(c for c in corpus if c.id == CALL_ID)


def summarizer_for(server: LocalLlmServer, **options: Any) -> OpenAISummarizer:
    kw: dict[str, Any] = {"timeout_s": SLOW_S, "max_retries": 0, "max_tokens": 512} | options
    return OpenAISummarizer(
        api_key=server.api_key,
        base_url=server.base_url,
        model=server.model,
        json_mode="json_object",
        system_role=False,
        **kw,
    )


async def raw_answer(server: LocalLlmServer, call: Call, max_tokens: int) -> tuple[str, str]:
    """The model's own answer to the summarizer's request: content and finish reason."""
    from softphone.domain.transcript import as_text

    async with openai.AsyncOpenAI(
        api_key=server.api_key.get(), base_url=server.base_url, timeout=SLOW_S, max_retries=0
    ) as client:
        request: dict[str, Any] = {
            "model": server.model,
            # As the summarizer asks Gemma, which has no system role.
            "messages": [
                {
                    "role": "user",
                    "content": f"{SYSTEM_PROMPT}\n\nThe call:\n{as_text(call.reference_segments())}",
                }
            ],
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "response_format": {"type": "json_object", "schema": bounded_schema()},
        }
        resp = await client.chat.completions.create(**request)
    choice = resp.choices[0]
    return choice.message.content or "", choice.finish_reason


async def test_the_server_answers_in_the_card_schema(
    llm_server: LocalLlmServer, call: Call
) -> None:
    content, finish = await raw_answer(llm_server, call, max_tokens=1024)
    assert finish == "stop", content
    data = json.loads(content)
    schema = bounded_schema()
    assert set(data) == set(schema["required"])
    assert data["sentiment"] in SENTIMENTS
    for name in ("key_facts", "actions_taken", "open_items"):
        assert isinstance(data[name], list) and len(data[name]) <= MAX_ITEMS
        assert all(isinstance(x, str) for x in data[name])


async def test_a_corpus_call_gets_a_valid_card(llm_server: LocalLlmServer, call: Call) -> None:
    async with summarizer_for(llm_server) as summarizer:
        card = await summarizer.summarize(call.reference_segments())
    assert card.source == "openai" and not card.fallback
    assert card.reason and card.sentiment in SENTIMENTS
    for items in (card.key_facts, card.actions_taken, card.open_items):
        assert len(items) <= MAX_ITEMS and len(set(items)) == len(items)


async def test_an_answer_cut_short_keeps_its_complete_fields(
    llm_server: LocalLlmServer, call: Call
) -> None:
    content, _ = await raw_answer(llm_server, call, max_tokens=1024)
    whole = parse_card(content)
    # Cut the real answer just inside its last value: JSON no more.
    value = re.search(r'"next_step"\s*:\s*"', content)
    assert value is not None
    cut = content[: value.end() + 1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)
    repaired = parse_card(cut)
    assert repaired.reason == whole.reason
    assert repaired.key_facts == whole.key_facts
    assert repaired.next_step == ""  # the half-written value is dropped, never kept


async def test_a_real_truncation_is_repaired_or_falls_back(
    llm_server: LocalLlmServer, call: Call
) -> None:
    content, finish = await raw_answer(llm_server, call, max_tokens=64)
    assert finish == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    async with summarizer_for(llm_server, max_tokens=64) as summarizer:
        card = await summarize_with_fallback(
            summarizer, OfflineSummarizer(), call.reference_segments()
        )
    try:
        expected = parse_card(content)
    except ValidationError:
        # Not even the reason was complete: asked once more, then the offline card.
        assert card.fallback and card.source == "offline"
        assert "58213" in card.to_text()
    else:
        assert card.source == "openai" and card.reason == expected.reason


async def test_a_timeout_shorter_than_generation_falls_back(
    llm_server: LocalLlmServer, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with summarizer_for(llm_server, timeout_s=0.2) as summarizer:
        with pytest.raises(SpeechError, match="timed out") as info:
            await summarizer.summarize(call.reference_segments())
        assert info.value.retryable
        card = await summarize_with_fallback(
            summarizer, OfflineSummarizer(), call.reference_segments()
        )
    assert card.fallback and card.source == "offline"
    assert "58213" in card.to_text()
    reasons = [getattr(r, "error", "") for r in caplog.records if "using the offline" in r.message]
    assert reasons and "timed out" in reasons[-1]
    assert llm_server.api_key.get() not in caplog.text
    # The server is still there for the next call.
    async with summarizer_for(llm_server) as summarizer:
        assert (await summarizer.summarize(call.reference_segments())).source == "openai"


async def test_a_wrong_key_is_refused_and_never_shown(
    llm_server: LocalLlmServer, call: Call
) -> None:
    summarizer = OpenAISummarizer(
        api_key=Secret("sk-not-the-servers-key"),
        base_url=llm_server.base_url,
        model=llm_server.model,
        json_mode="json_object",
        system_role=False,
        timeout_s=SLOW_S,
    )
    async with summarizer:
        with pytest.raises(SpeechError, match="HTTP 401") as info:
            await summarizer.summarize(call.reference_segments())
    assert not info.value.retryable and "sk-not-the-servers-key" not in str(info.value)


async def test_a_server_killed_mid_request_falls_back(
    llm_environment: LlmEnvironment,
    call: Call,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        LocalLlmServer(environment=llm_environment, work_dir=tmp_path / "llm") as server,
        summarizer_for(server, max_retries=1) as summarizer,
    ):
        task = asyncio.create_task(
            summarize_with_fallback(summarizer, OfflineSummarizer(), call.reference_segments())
        )
        # Wait until the request is being worked on (the server's CPU time grows).
        await wait_for_busy(server)
        assert not task.done()
        server.kill()
        card = await asyncio.wait_for(task, SLOW_S)
    assert card.fallback and card.source == "offline"
    assert "58213" in card.to_text()
    reasons = [getattr(r, "error", "") for r in caplog.records if "using the offline" in r.message]
    assert reasons and "could not reach the server" in reasons[-1]


async def wait_for_busy(server: LocalLlmServer) -> None:
    """Until the server process has used a second of CPU more than when asked."""
    assert server.pid is not None

    def cpu_s() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime + stime, in clock ticks
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start = cpu_s()
    for _ in range(int(SLOW_S / 0.05)):
        if cpu_s() - start >= 1.0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the LLM server never started working on the request")


def test_a_too_small_context_is_refused(llm_environment: LlmEnvironment, tmp_path: Path) -> None:
    with pytest.raises(LocalServerError, match="at least 512"):
        LocalLlmServer(environment=llm_environment, work_dir=tmp_path, n_ctx=100)
