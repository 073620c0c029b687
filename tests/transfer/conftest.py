"""Fixtures for the transfer tests: the service (embedded or backend), and parties.

Every scenario runs twice: against the embedded orchestrator and against the
real backend under uvicorn (``transfer_env`` is parametrized). Parties are real
RTC participants playing tones: caller 440 Hz, agent A 660 Hz, agent B 880 Hz;
hold audio is 330 Hz.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc

from softphone.client.agent_call import AgentCall
from softphone.client.caller_mover import CallerMover
from softphone.client.commands import CommandGuard
from softphone.client.lobby import AgentLobby, Offer
from softphone.errors import (
    BackendError,
    MediaError,
    NotFoundError,
    SoftphoneError,
    TransferError,
    ValidationError,
)
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.redis_server import LocalRedisServer
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import TransferService
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener, tone_level
from tests.transfer.backend_process import BackendProcess

CALLER_HZ = 440.0
A_HZ = 660.0
B_HZ = 880.0
HOLD_HZ = 330.0
# Long enough that what a test does while B's phone rings (a caller hanging up,
# B accepting) is seen by the service before the offer expires, on a loaded
# machine too: with 3 s, CI once saw a hang-up during the offer end as
# "returned" (the offer expired while the server still listed the caller).
OFFER_TIMEOUT_S = 6.0
# Embedded: a caller gone from its call this long after placing it has abandoned it.
CALL_JOIN_GRACE_S = 2.0
# Share of 10 ms windows that must carry a tone for it to count as heard. Not
# 1.0: on a busy 2-core machine the tone players and decoders hiccup, but a
# leg with no audio scores 0.
HEARD = 0.5
_ids = itertools.count()


@dataclasses.dataclass
class TransferEnv:
    """One service under test and how to reach it as each identity."""

    kind: str
    url: str
    lobby: str
    minter: TokenMinter
    service_for: Callable[[str], TransferService]
    backend: BackendProcess | None = None
    # The service plays hold audio with a participant of its own (the path
    # for callers without an app); else A's app plays it.
    service_holds: bool = False


@contextlib.asynccontextmanager
async def embedded_service(
    server: LocalLiveKitServer,
    minter: TokenMinter,
    *,
    lobby: str,
    url: str | None = None,
    **options: Any,
) -> AsyncIterator[TransferEnv]:
    """An embedded orchestrator administering ``server``, as a TransferEnv; closed at the end.

    Args:
        server: The LiveKit server (node) whose API the service uses.
        minter: Mints tokens that server accepts.
        lobby: The lobby room.
        url: The LiveKit URL handed to the apps (default: ``server``'s).
        options: More :class:`TransferOrchestrator` arguments (offline
            summaries, the suite's timeouts and the service's own hold audio
            unless given).
    """
    from softphone.server.transfer_orchestrator import TransferOrchestrator
    from softphone.speech.offline_summarizer import OfflineSummarizer

    options = {
        "summarizer": OfflineSummarizer(timeout_s=3.0),
        "fallback_summarizer": OfflineSummarizer(timeout_s=3.0),
        "offer_timeout_s": OFFER_TIMEOUT_S,
        "move_timeout_s": 8.0,
        "call_join_grace_s": CALL_JOIN_GRACE_S,
        **options,
    }
    async with RoomAdmin(
        url=server.url, api_key=server.api_key, api_secret=server.api_secret
    ) as rooms:
        service = TransferOrchestrator(
            url=url or server.url, rooms=rooms, minter=minter, lobby_room=lobby, **options
        )
        async with service:
            yield TransferEnv(
                kind="embedded",
                url=url or server.url,
                lobby=lobby,
                minter=minter,
                service_for=lambda identity: service,
                service_holds=options.get("hold_audio", True),
            )


@pytest.fixture(scope="session")
async def embedded_env(
    livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> AsyncIterator[TransferEnv]:
    """The embedded orchestrator, one per session."""
    async with embedded_service(livekit_server, minter, lobby="lobby-embedded") as env:
        yield env


@pytest.fixture(scope="session")
async def backend_env(
    livekit_server: LocalLiveKitServer,
    minter: TokenMinter,
    redis_server: LocalRedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TransferEnv]:
    """Two real backend replicas under uvicorn (child processes) on one Redis, one per session.

    Identities alternate between them (see :func:`clients_env`), so in every
    scenario the caller, A and B reach different replicas: whatever one
    replica does, the other must know.
    """
    first = BackendProcess(
        livekit_server=livekit_server,
        workdir=tmp_path_factory.mktemp("backend"),
        lobby="lobby-backend",
        offer_timeout_s=OFFER_TIMEOUT_S,
        redis_url=redis_server.url,
    )
    second = BackendProcess(
        livekit_server=livekit_server,
        workdir=tmp_path_factory.mktemp("backend-2"),
        lobby="lobby-backend",
        offer_timeout_s=OFFER_TIMEOUT_S,
        replica_of=first,
        redis_url=redis_server.url,
    )
    async with (
        first,
        second,
        clients_env([first, second], url=livekit_server.url, minter=minter) as env,
    ):
        yield env


@contextlib.asynccontextmanager
async def clients_env(
    backends: BackendProcess | list[BackendProcess], *, url: str, minter: TokenMinter
) -> AsyncIterator[TransferEnv]:
    """A TransferEnv over the backend's replicas: one HTTP client per identity, closed at the end.

    With several replicas, each new identity gets the next one in turn.
    """
    replicas = backends if isinstance(backends, list) else [backends]
    backend = replicas[0]
    clients: dict[str, TransferService] = {}

    def service_for(identity: str) -> TransferService:
        if identity not in clients:
            clients[identity] = replicas[len(clients) % len(replicas)].client_for(identity)
        return clients[identity]

    try:
        yield TransferEnv(
            kind="backend",
            url=url,
            lobby=backend.lobby,
            minter=minter,
            service_for=service_for,
            backend=backend,
        )
    finally:
        for c in clients.values():
            await c.aclose()


@pytest.fixture(params=["embedded", "backend"])
def transfer_env(request: pytest.FixtureRequest) -> TransferEnv:
    """The service under test: embedded, then the backend."""
    env: TransferEnv = request.getfixturevalue(f"{request.param}_env")
    return env


@dataclasses.dataclass
class Party:
    """A real RTC participant playing a tone."""

    identity: str
    source: rtc.AudioSource
    tone: TonePlayer


def new_party(identity: str, freq: float) -> Party:
    """A tone source for one participant (published by whoever joins for it)."""
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    tone = TonePlayer(source, freq=freq)
    return Party(identity, source, tone)


@dataclasses.dataclass
class Call:
    """A call in progress: the caller with A in R1, B waiting in the lobby."""

    env: TransferEnv
    room: str
    caller: Party
    a: Party
    b: Party
    caller_session: RtcSession
    mover: CallerMover | None
    a_call: AgentCall
    b_lobby: AgentLobby
    offers: asyncio.Queue[Offer]
    withdrawn: list[str]
    extra: list[Any]
    call_id: str = ""

    @property
    def caller_now(self) -> RtcSession:
        """The caller's current session (R2 after a move)."""
        return self.mover.session if self.mover else self.caller_session

    @property
    def a_service(self) -> TransferService:
        return self.env.service_for(self.a.identity)

    async def next_offer(self, timeout_s: float = 10.0) -> Offer:
        return await asyncio.wait_for(self.offers.get(), timeout_s)


def ids(prefix: str) -> tuple[str, str, str, str]:
    """Unique room, caller, A and B names (the backend knows keys for them).

    The room name is for tests that make a room of their own; calls get
    theirs from the service.
    """
    n = next(_ids)
    tag = uuid.uuid4().hex[:6]
    return f"call-{prefix}-{n}-{tag}", f"caller-{n}", f"agent-a-{n}", f"agent-b-{n}"


@contextlib.asynccontextmanager
async def open_call(
    env: TransferEnv, *, caller_moves: bool = True, prefix: str = "t"
) -> AsyncIterator[Call]:
    """Caller and A talking in R1, B online in the lobby; everything closed at the end."""
    _, c_id, a_id, b_id = ids(prefix)
    caller, a, b = new_party(c_id, CALLER_HZ), new_party(a_id, A_HZ), new_party(b_id, B_HZ)
    for p in (caller, a, b):
        p.tone.start()
    # The caller's app creates the call (its "call" button); the service
    # registers it with A and answers the caller's token; A asks for its own.
    ticket = await env.service_for(c_id).create_call(caller=c_id, agent=a_id, requester=c_id)
    room = ticket.call.room
    a_grant = await env.service_for(a_id).mint_token(identity=a_id, room=room, role="agent")
    c_session = RtcSession(url=env.url, token=ticket.token.token)
    a_session = RtcSession(url=env.url, token=a_grant.token)
    await c_session.connect()
    await a_session.connect()
    await c_session.publish_audio(caller.source)
    await a_session.publish_audio(a.source)
    # A caller whose client cannot obey a move (e.g. SIP) has no handler for it.
    guard = CommandGuard(await env.service_for(a_id).service_info())
    mover = CallerMover(session=c_session, mic=caller.source, guard=guard) if caller_moves else None
    a_call = AgentCall(
        session=a_session,
        mic=a.source,
        service=env.service_for(a_id),
        guard=guard,
        hold_audio=not env.service_holds,
    )
    b_grant = await env.service_for(b_id).mint_token(identity=b_id, room=env.lobby, role="agent")
    b_lobby = AgentLobby(
        lobby_token=b_grant.token,
        url=env.url,
        service=env.service_for(b_id),
        guard=guard,
        mic=b.source,
    )
    offers: asyncio.Queue[Offer] = asyncio.Queue()
    withdrawn: list[str] = []
    b_lobby.on("offer", offers.put_nowait)
    b_lobby.on("offer_withdrawn", lambda w: withdrawn.append(w.transfer_id))
    await b_lobby.start()
    call = Call(
        env, room, caller, a, b, c_session, mover, a_call, b_lobby, offers, withdrawn, [],
        call_id=ticket.call.call_id,
    )  # fmt: skip
    try:
        yield call
    finally:
        for x in call.extra:
            with contextlib.suppress(Exception):
                await x.aclose()
        await b_lobby.aclose()
        await a_call.aclose()
        # The mover also closes its standby connection and background tasks.
        await (mover if mover else c_session).aclose()
        for p in (caller, a, b):
            await p.tone.aclose()


# The name of every participant's microphone track.
MIC = "microphone"


async def hears(
    session: RtcSession,
    identity: str,
    freq: float,
    seconds: float = 0.6,
    within_s: float = 5.0,
    *,
    track: str | None = None,
) -> float:
    """Share of 10 ms windows carrying ``freq`` from ``identity``, over ``seconds`` after onset.

    Listens to ``identity``'s track named ``track`` (default: its first).
    Waits up to ``within_s`` for the tone to start (a new subscription may
    begin with silence on a busy machine); 0.0 if it never does.
    """
    audio = await session.wait_for_audio(identity, timeout_s=10.0, name=track)
    listener = Listener(audio)
    deadline = time.monotonic() + within_s
    onset = None
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if onset is None:
                onset = listener.capture.first_time_with(freq, after=0.0)
            if onset is not None and time.monotonic() > onset + seconds + 0.1:
                break
    finally:
        await listener.aclose()
    if onset is None:
        return 0.0
    windows = [w for t, w in listener.capture.windows() if onset + 0.1 <= t <= onset + seconds]
    if not windows:
        return 0.0
    return float(np.mean([tone_level(w, freq) > 0.05 for w in windows]))


async def hears_track(
    session: RtcSession, identity: str, name: str, freq: float, seconds: float = 1.2
) -> float:
    """Share of 10 ms windows of ``identity``'s track ``name`` carrying ``freq`` (0.0: never).

    Over 1.2 s rather than :func:`hears`' 0.6: the tracks asserted this way are
    mostly hold tracks just published, whose first half second on a loaded
    machine can be mostly a new subscription's catching up (CI once counted 17
    windows in 0.5 s, 8 with the tone).
    """
    return await hears(session, identity, freq, seconds, track=name)


async def silent_track(
    session: RtcSession, identity: str, name: str, freq: float, seconds: float = 0.8
) -> bool:
    """True if ``freq`` is absent from ``identity``'s track ``name`` (or it is gone) for ``seconds``."""
    try:
        audio = await session.wait_for_audio(identity, timeout_s=1.0, name=name)
    except SoftphoneError:
        return True
    listener = Listener(audio)
    await asyncio.sleep(seconds)
    await listener.aclose()
    return all(tone_level(w, freq) < 0.02 for _, w in listener.capture.windows())


def tracks_of(session: RtcSession, identity: str, name: str | None = None) -> list[str]:
    """Names of ``identity``'s tracks ``session`` receives now."""
    return [
        a.name
        for a in session.remote_tracks()
        if a.identity == identity and (name is None or a.name == name)
    ]


async def silent(session: RtcSession, identity: str, freq: float, seconds: float = 0.8) -> bool:
    """True if ``freq`` from ``identity`` is absent (or the track is gone) for ``seconds``."""
    try:
        audio = await session.wait_for_audio(identity, timeout_s=1.0)
    except MediaError:
        return True
    listener = Listener(audio)
    await asyncio.sleep(seconds)
    await listener.aclose()
    return all(tone_level(w, freq) < 0.02 for _, w in listener.capture.windows())


async def room_exists(rooms: RoomAdmin, name: str) -> bool:
    """Whether the server still lists the room."""
    return bool(await rooms.list_rooms([name]))


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Wait until ``await check()`` is true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


_KIND = {400: ValidationError, 404: NotFoundError, 409: TransferError}


async def refused(env: TransferEnv, aw: Awaitable[Any], status: int) -> SoftphoneError:
    """``aw`` fails with ``status`` (backend) or the matching error class (embedded)."""
    with pytest.raises(SoftphoneError) as info:
        await aw
    err = info.value
    if env.kind == "backend":
        assert isinstance(err, BackendError) and err.status == status, err
    else:
        assert isinstance(err, _KIND[status]), err
    assert err.message
    return err
