"""A summarizer that fails or hangs degrades the summary, never the transfer.

The configured summarizer is the real OpenAI client code talking to the local
OpenAI-compatible server (``tests/providers/openai_api.py``) switched to fail
or hang; the offline summarizer stands in and the card is marked. Runs against
the embedded service (with a history store: the chain of custody) and the
backend under uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from softphone.config import Secret
from softphone.infra.local_server import LocalLiveKitServer
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.store.history import HistoryStore
from tests.providers.openai_api import FakeOpenAI, openai_server
from tests.transfer.backend_process import BackendProcess
from tests.transfer.conftest import (
    OFFER_TIMEOUT_S,
    TransferEnv,
    clients_env,
    embedded_service,
    eventually,
    open_call,
    room_exists,
)
from tests.transfer.test_transfer_flows import TRANSCRIPT

pytestmark = pytest.mark.integration
SUMMARY_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def openai_api() -> Iterator[FakeOpenAI]:
    with openai_server() as api:
        yield api


@pytest.fixture(scope="module")
async def history(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HistoryStore]:
    store = HistoryStore(tmp_path_factory.mktemp("history") / "history.sqlite3")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
async def degraded_embedded(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    openai_api: FakeOpenAI,
    history: HistoryStore,
) -> AsyncIterator[TransferEnv]:
    from softphone.speech.openai_summarizer import OpenAISummarizer

    async with embedded_service(
        livekit_server,
        minter,
        lobby="lobby-degraded-embedded",
        summarizer=OpenAISummarizer(
            api_key=Secret(openai_api.api_key),
            base_url=openai_api.v1,
            timeout_s=SUMMARY_TIMEOUT_S,
            max_retries=0,
        ),
        history=history,
    ) as env:
        yield env


@pytest.fixture(scope="module")
async def degraded_backend(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    openai_api: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TransferEnv]:
    async with (
        BackendProcess(
            livekit_server=livekit_server,
            workdir=tmp_path_factory.mktemp("degraded-backend"),
            lobby="lobby-degraded-backend",
            offer_timeout_s=OFFER_TIMEOUT_S,
            extra_args=("--summarizer", "openai", "--summary-timeout", str(SUMMARY_TIMEOUT_S)),
            extra_env={"OPENAI_API_KEY": openai_api.api_key, "OPENAI_BASE_URL": openai_api.v1},
        ) as backend,
        clients_env(backend, url=livekit_server.url, minter=minter) as env,
    ):
        yield env


@pytest.fixture(params=["embedded", "backend"])
def degraded_env(request: pytest.FixtureRequest) -> TransferEnv:
    env: TransferEnv = request.getfixturevalue(f"degraded_{request.param}")
    return env


@pytest.mark.parametrize("failure", ["error", "hang"])
async def test_transfer_completes_with_marked_fallback_summary(
    degraded_env: TransferEnv,
    openai_api: FakeOpenAI,
    history: HistoryStore,
    room_admin: RoomAdmin,
    failure: str,
) -> None:
    openai_api.always(failure)
    try:
        async with open_call(degraded_env, prefix=f"sum-{failure}") as call:
            ticket = await call.a_call.transfer(
                caller=call.caller.identity,
                to_agent=call.b.identity,
                mode="direct",
                transcript=TRANSCRIPT,
            )
            offer = await call.next_offer()
            assert offer.summary is not None
            assert offer.summary.fallback and offer.summary.source == "offline"
            assert offer.summary.reason  # the offline summarizer still read the transcript
            await call.b_lobby.accept(offer.transfer_id)
            snap = await call.a_service.wait_for_phase(ticket.transfer_id, ["completed"])
            assert snap.summary is not None and snap.summary.fallback
            if degraded_env.kind == "embedded":
                # The chain of custody: who handed the caller to whom, when, with which summary.
                calls = await history.list_calls(search=call.room)
                detail = await history.get_call(calls[0].id)
                steps = [(e.phase, e.from_agent, e.to_agent) for e in detail.transfers]
                assert steps[0] == ("preparing", call.a.identity, call.b.identity)
                assert steps[-1][0] == "completed"
                assert [e.at for e in detail.transfers] == sorted(e.at for e in detail.transfers)
                assert detail.transfers[-1].detail["summary_fallback"] is True
                assert detail.summaries and detail.summaries[0].fallback
    finally:
        openai_api.script()


async def test_caller_hangs_up_while_preparing(
    degraded_env: TransferEnv, openai_api: FakeOpenAI, room_admin: RoomAdmin
) -> None:
    openai_api.always("hang")
    try:
        async with open_call(degraded_env, prefix="hangup-prep") as call:
            service = call.a_service
            start = asyncio.create_task(
                service.start_transfer(
                    TransferRequest(
                        caller=call.caller.identity,
                        from_agent=call.a.identity,
                        to_agent=call.b.identity,
                        call_room=call.room,
                        transcript=TRANSCRIPT,
                    )
                )
            )
            await asyncio.sleep(0.3)
            await call.caller_session.aclose()
            ticket = await start
            snap = await service.wait_for_phase(ticket.transfer_id, ["ended"])
            assert snap.reason is not None and snap.reason.code == "caller_left"
            assert "offering" not in [t.phase for t in snap.timeline]
            await eventually(lambda: _gone(room_admin, call.room))
            await eventually(lambda: _gone(room_admin, ticket.new_room))
            assert call.offers.empty()  # B never rang
    finally:
        openai_api.script()


async def _gone(rooms: RoomAdmin, name: str) -> bool:
    return not await room_exists(rooms, name)
