"""Client-side transfer helpers every role's app uses, headless (the UI wraps them).

- :class:`AgentLobby`: an online agent in the lobby: presence in its
  attributes, a live directory of the other agents, incoming offers (RPC),
  accept (join R2) or decline, and the bring-the-agent instruction.
- :class:`CallerMover`: the caller's side: obeys a move instruction
  make-before-break (join R2, publish the mic there, only then leave R1).
- :class:`AgentCall`: agent A's side of a call being transferred: mutes A's
  mic while the caller is on hold, joins the consult leg, unmutes on return.

They talk to the service only through :class:`TransferService` and to
LiveKit only through :class:`~softphone.media.session.RtcSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from types import TracebackType
from typing import Any, Literal

from livekit import rtc

from softphone.domain.events import EventEmitter
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment, unpack_transcript
from softphone.domain.transfer import Mode, TransferSnapshot
from softphone.errors import MediaError, SoftphoneError, ValidationError
from softphone.media.session import DataMessage, RtcSession
from softphone.services.transfer_service import (
    PRESENCE_ATTRIBUTE,
    PRESENCES,
    RPC_JOIN,
    RPC_MOVE,
    RPC_OFFER,
    RPC_STANDBY,
    RPC_WITHDRAW,
    STATUS_TOPIC,
    AgentEntry,
    Presence,
    TokenGrant,
    TransferRequest,
    TransferService,
    TransferTicket,
)

log = logging.getLogger(__name__)

LobbyEvent = Literal["offer", "offer_withdrawn", "directory_changed", "joined_room", "moved"]
CallerEvent = Literal["joined", "moved"]
AgentCallEvent = Literal["transfer_changed", "consult_joined", "consult_left"]
MoveStrategy = Literal["make_before_break", "break_before_make"]
# A token this close to expiry is re-minted before use.
TOKEN_MARGIN_S = 10.0


@dataclasses.dataclass(frozen=True)
class Offer:
    """A transfer offered to this agent, with the summary to read before joining.

    ``transcript`` is the call so far (its latest part, when the whole does not
    fit in an offer; ``transcript_omitted`` counts the earlier segments left out).
    """

    transfer_id: str
    from_agent: str
    caller: str
    mode: Mode
    new_room: str
    summary: SummaryCard | None
    received_at: float
    transcript: tuple[TranscriptSegment, ...] = ()
    transcript_omitted: int = 0


@dataclasses.dataclass(frozen=True)
class Withdrawn:
    """An offer that is gone before it was answered (caller hung up, cancelled, no answer)."""

    transfer_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Moved:
    """This participant now talks in ``room`` (after a move or a bring-the-agent)."""

    room: str
    session: RtcSession
    gap_s: float


def _parse_grant(payload: str) -> TokenGrant:
    try:
        data = json.loads(payload)
        return TokenGrant.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationError("payload", "not a token grant") from exc


async def _join(grant: TokenGrant, mic: rtc.AudioSource | None) -> RtcSession:
    session = RtcSession(url=grant.url, token=grant.token)
    await session.connect()
    if mic is not None:
        try:
            await session.publish_audio(mic)
        except MediaError:
            await session.aclose()
            raise
    return session


async def _answer_when_done(pending: dict[str, asyncio.Task[Any]], room: str) -> None:
    """Wait for the work an instruction started for ``room``; its failure is the RPC's answer.

    Shielded: a timed-out RPC handler must not cancel the work. A failed one
    is forgotten, so a repeated instruction tries again.
    """
    try:
        await asyncio.shield(pending[room])
    except MediaError as exc:
        pending.pop(room, None)
        raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, exc.message) from None


def _result(task: asyncio.Task[RtcSession]) -> RtcSession | None:
    """The session a finished connect task made; None while running or if it failed."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _go_live(session: RtcSession) -> None:
    """A standby session's mic: unmuted and open to everyone in the room."""
    session.set_muted(False)
    session.restrict_subscribers(None)


async def _first_audio(session: RtcSession, timeout_s: float) -> None:
    async def first() -> None:
        async for _ in session.remote_audio():
            return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(first(), timeout_s)


class _Tasks:
    """Background tasks kept alive and cancelled on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transfer helper task failed", exc_info=task.exception())

    async def cancel(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AgentLobby(EventEmitter[LobbyEvent]):
    """An agent online in the lobby: presence, live directory, offers.

    Use as ``async with AgentLobby(...) as lobby:``. Subscribe to ``offer``
    (:class:`Offer`) and ``offer_withdrawn`` (:class:`Withdrawn`); answer with
    :meth:`accept` or :meth:`decline`. After accepting, :attr:`call_session` is
    the session in the transfer room; a bring-the-agent instruction moves it to
    the caller's room (event ``moved``).

    Args:
        lobby_token: This agent's token for the lobby room.
        url: The LiveKit URL.
        service: The transfer service (embedded or remote).
        mic: The agent's microphone source, published in call rooms (not the lobby).
        presence: Initial presence.
    """

    def __init__(
        self,
        *,
        lobby_token: str,
        url: str,
        service: TransferService,
        mic: rtc.AudioSource | None = None,
        presence: Presence = "available",
    ) -> None:
        super().__init__()
        self._service = service
        self._mic = mic
        self._presence: Presence = presence
        self.lobby = RtcSession(url=url, token=lobby_token)
        self.offers: dict[str, Offer] = {}
        self._offered: set[str] = set()
        self.call_session: RtcSession | None = None
        self._tasks = _Tasks()
        self.lobby.on("participant_joined", lambda _: self.emit("directory_changed"))
        self.lobby.on("participant_left", lambda _: self.emit("directory_changed"))
        self.lobby.on("participant_attributes_changed", lambda _: self.emit("directory_changed"))

    @property
    def identity(self) -> str:
        """This agent's identity."""
        return self.lobby.identity

    @property
    def presence(self) -> Presence:
        """This agent's current presence."""
        return self._presence

    async def start(self) -> AgentLobby:
        """Join the lobby (audio off), publish presence, and answer offers.

        Raises:
            MediaError: The lobby could not be joined.
        """
        await self.lobby.connect()
        self.lobby.register_rpc(RPC_OFFER, self._on_offer)
        self.lobby.register_rpc(RPC_WITHDRAW, self._on_withdraw)
        await self.set_presence(self._presence)
        return self

    async def set_presence(self, presence: Presence) -> None:
        """Publish ``available``, ``busy`` or ``away`` in this agent's attributes.

        Raises:
            ValidationError: Not a presence value.
        """
        if presence not in PRESENCES:
            raise ValidationError("presence", f"must be one of {', '.join(PRESENCES)}")
        self._presence = presence
        await self.lobby.set_attributes({PRESENCE_ATTRIBUTE: presence})

    def directory(self) -> list[AgentEntry]:
        """The other online agents, as seen live in the lobby."""
        out = []
        for p in self.lobby.room.remote_participants.values():
            attrs = dict(p.attributes)
            if attrs.get("role") != "agent":
                continue
            presence = attrs.get(PRESENCE_ATTRIBUTE, "away")
            out.append(
                AgentEntry(
                    identity=p.identity,
                    name=p.name or p.identity,
                    presence=presence if presence in PRESENCES else "away",
                )
            )
        return sorted(out, key=lambda a: a.identity)

    async def _on_offer(self, inv: rtc.RpcInvocationData) -> str:
        try:
            data = json.loads(inv.payload)
            summary = SummaryCard.from_dict(data["summary"]) if data.get("summary") else None
            transcript, omitted = unpack_transcript(data)
            offer = Offer(
                transfer_id=str(data["transfer_id"]),
                from_agent=str(data["from_agent"]),
                caller=str(data["caller"]),
                mode=data["mode"],
                new_room=str(data["new_room"]),
                summary=summary,
                received_at=time.monotonic(),
                transcript=tuple(transcript),
                transcript_omitted=omitted,
            )
        except (json.JSONDecodeError, KeyError, TypeError, SoftphoneError):
            raise rtc.RpcError(
                rtc.RpcError.ErrorCode.APPLICATION_ERROR, "malformed offer"
            ) from None
        if offer.transfer_id in self._offered:
            return "ringing"  # the same offer again: the service did not get the first answer
        self._offered.add(offer.transfer_id)
        self.offers[offer.transfer_id] = offer
        self.emit("offer", offer)
        return "ringing"

    async def _on_withdraw(self, inv: rtc.RpcInvocationData) -> str:
        try:
            data = json.loads(inv.payload)
            tid, reason = str(data["transfer_id"]), str(data.get("reason", ""))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, "malformed") from None
        if self.offers.pop(tid, None) is not None:
            self.emit("offer_withdrawn", Withdrawn(tid, reason))
        return "ok"

    async def accept(self, transfer_id: str) -> RtcSession:
        """Accept an offer: get a token from the service and join the transfer room.

        Raises:
            SoftphoneError: The service refused (e.g. the offer was withdrawn).
        """
        self.offers.pop(transfer_id, None)
        grant = await self._service.accept(transfer_id, agent=self.identity)
        session = await _join(grant, self._mic)
        session.register_rpc(RPC_JOIN, self._on_join)
        self.call_session = session
        with contextlib.suppress(SoftphoneError, Exception):
            await self.set_presence("busy")
        self.emit("joined_room", session)
        return session

    async def decline(self, transfer_id: str, reason: str = "") -> None:
        """Decline an offer, with a reason A will see."""
        self.offers.pop(transfer_id, None)
        await self._service.decline(transfer_id, agent=self.identity, reason=reason)

    async def _on_join(self, inv: rtc.RpcInvocationData) -> str:
        # Bring-the-agent: the caller could not move, so this agent goes to R1.
        grant = _parse_grant(inv.payload)
        old = self.call_session
        started = time.monotonic()
        try:
            new = await _join(grant, self._mic)
        except MediaError as exc:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, exc.message) from None
        self.call_session = new
        self._tasks.spawn(self._close_when_audible(old, new))
        self.emit("moved", Moved(grant.room, new, time.monotonic() - started))
        return "joined"

    @staticmethod
    async def _close_when_audible(old: RtcSession | None, new: RtcSession) -> None:
        # Answer the instruction first, leave the old room once the new one is audible.
        await _first_audio(new, 1.0)
        if old is not None:
            await old.aclose()

    async def leave_call(self) -> None:
        """Leave the current call room and become available again."""
        session, self.call_session = self.call_session, None
        if session is not None:
            await session.aclose()
        with contextlib.suppress(Exception):
            await self.set_presence("available")

    async def aclose(self) -> None:
        """Leave every room."""
        await self._tasks.cancel()
        if self.call_session is not None:
            await self.call_session.aclose()
        await self.lobby.aclose()

    async def __aenter__(self) -> AgentLobby:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class CallerMover(EventEmitter[CallerEvent]):
    """The caller's side of a transfer: obeys ``transfer.move``.

    Takes ownership of ``session`` (the caller's session in R1): after a move,
    :attr:`session` is the session in R2 and the old one is closed.

    Args:
        session: The caller's connected session in the call room.
        mic: The caller's microphone source (published again in the new room).
        strategy: ``make_before_break`` (join and publish, then leave) or
            ``break_before_make`` (the naive order; for the benchmark).
        audible_timeout_s: Make-before-break waits at most this long for the
            first remote audio in the new room before leaving the old one.

    Events: ``joined`` (the new session, before the old one is left) and
    ``moved`` (:class:`Moved`, once the move is done).
    """

    def __init__(
        self,
        *,
        session: RtcSession,
        mic: rtc.AudioSource | None,
        strategy: MoveStrategy = "make_before_break",
        audible_timeout_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.session = session
        self._audible_timeout_s = audible_timeout_s
        self._tasks = _Tasks()
        self._mic = mic
        self._strategy = strategy
        self.moves: list[Moved] = []
        # Moves under way or done, by room: a repeated instruction joins the first.
        self._moving: dict[str, asyncio.Task[Any]] = {}
        # Standby connections to transfer rooms, by room (see _on_standby).
        self._standby: dict[str, asyncio.Task[RtcSession]] = {}
        self._register(session)

    def _register(self, session: RtcSession) -> None:
        session.register_rpc(RPC_MOVE, self._on_move)
        if self._strategy == "make_before_break":  # the naive baseline joins from scratch
            session.register_rpc(RPC_STANDBY, self._on_standby)

    def standby(self, room: str) -> RtcSession | None:
        """The connected standby session in ``room``, if the app is waiting there."""
        task = self._standby.get(room)
        return _result(task) if task is not None else None

    async def _on_standby(self, inv: rtc.RpcInvocationData) -> str:
        """Connect to the transfer room ahead of the move, deaf and unheard.

        The standby grant lets this session not subscribe; the mic is
        published here at once, muted and with subscription permissions that
        admit nobody. The service turns the grant into the caller's
        permissions when the transfer completes; the app unmutes and admits
        everyone as soon as it sees that (no negotiation, and no waiting for
        the move instruction, which confirms it). A repeated instruction
        finds the same connection.
        """
        grant = _parse_grant(inv.payload)
        task = self._standby.get(grant.room)
        if task is None:
            task = self._tasks.spawn(self._connect_standby(grant))
            self._standby[grant.room] = task
        await _answer_when_done(self._standby, grant.room)
        return "ready"

    async def _connect_standby(self, grant: TokenGrant) -> RtcSession:
        session = RtcSession(url=grant.url, token=grant.token)
        await session.connect()
        if self._mic is not None:
            session.restrict_subscribers([])
            session.set_muted(True)
            try:
                await session.publish_audio(self._mic)
            except MediaError:
                # Waits without it; the move then publishes from scratch.
                log.info("standby session could not publish yet")

            def promoted(may_listen: bool) -> None:
                # Only the service (server API) changes our permissions: that
                # is the transfer completing. Speak now; the move follows.
                if may_listen:
                    _go_live(session)

            session.on("may_listen", promoted)

        def gone(_reason: object) -> None:
            # The transfer ended without a move: its room was closed under us.
            task = self._standby.get(grant.room)
            if task is not None and _result(task) is session:
                del self._standby[grant.room]
                self._tasks.spawn(session.aclose())

        session.on("disconnected", gone)
        return session

    async def _take_standby(self, grant: TokenGrant) -> RtcSession | None:
        """The standby session in ``grant.room``, its mic heard; None if there is none."""
        task = self._standby.pop(grant.room, None)
        if task is None:
            return None
        try:
            session = await asyncio.shield(task)
        except (MediaError, asyncio.CancelledError):
            return None
        if not session.connected:
            await session.aclose()
            return None
        if self._mic is not None:
            _go_live(session)
            if not session.publishing:
                try:
                    await session.publish_audio(self._mic)
                except MediaError:
                    log.info("standby session could not publish; joining afresh")
                    await session.aclose()
                    return None
        return session

    async def _on_move(self, inv: rtc.RpcInvocationData) -> str:
        grant = _parse_grant(inv.payload)
        moving = self._moving.get(grant.room)
        if moving is None and self._strategy == "break_before_make":
            # The answer cannot come from a room already left: answer first.
            self._moving[grant.room] = self._tasks.spawn(self._move_quietly(grant))
            return "moving"
        if moving is None:
            # Make-before-break: answer once in the new room and publishing
            # there (the service then knows without polling), and leave the
            # old room in the background once the new one is audible. The
            # move runs as its own task: the service gives up waiting for an
            # answer under load and sends the instruction again, which must
            # find the same move, neither cancelled nor started twice.
            moving = self._tasks.spawn(self._enter_then_leave(grant, time.monotonic()))
            self._moving[grant.room] = moving
        elif self._strategy == "break_before_make":
            return "moving"
        await _answer_when_done(self._moving, grant.room)
        return "moved"

    async def _enter_then_leave(self, grant: TokenGrant, started: float) -> RtcSession:
        new = await self._enter(grant)
        self._tasks.spawn(self._leave_old(grant, new, started))
        return new

    async def _move_quietly(self, grant: TokenGrant) -> None:
        try:
            await self.move_to(grant)
        except MediaError:
            log.warning("caller could not move; staying in the call room")

    async def _enter(self, grant: TokenGrant) -> RtcSession:
        new = await self._take_standby(grant) or await _join(grant, self._mic)
        self._register(new)
        self.emit("joined", new)
        return new

    async def _leave_old(self, grant: TokenGrant, new: RtcSession, started: float) -> RtcSession:
        old = self.session
        if self._strategy == "make_before_break":
            # Leave only once the new room is audible (or after a short cap),
            # so the caller hears no gap.
            await _first_audio(new, self._audible_timeout_s)
        await old.aclose()
        self.session = new
        moved = Moved(grant.room, new, time.monotonic() - started)
        self.moves.append(moved)
        log.info("caller moved", extra={"room": grant.room, "ms": round(moved.gap_s * 1000)})
        self.emit("moved", moved)
        return new

    async def move_to(self, grant: TokenGrant) -> RtcSession:
        """Move to ``grant.room`` with the configured strategy.

        Raises:
            MediaError: The new room could not be joined; the caller stays in
                the old one (make-before-break) or is in no room (naive).
        """
        started = time.monotonic()
        if self._strategy == "break_before_make":
            await self.session.aclose()
        new = await self._enter(grant)
        return await self._leave_old(grant, new, started)

    async def aclose(self) -> None:
        """Hang up: leave the current room (and any standby connection)."""
        standby = list(self._standby.values())
        self._standby.clear()
        await self._tasks.cancel()
        for task in standby:
            session = _result(task)
            if session is not None:
                await session.aclose()
        await self.session.aclose()

    async def __aenter__(self) -> CallerMover:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AgentCall(EventEmitter[AgentCallEvent]):
    """Agent A's side of a call: starts a transfer and follows it.

    While the caller is on hold A's mic is muted in the call room (A's voice
    must not reach the caller); in warm modes A joins the transfer room as a
    second session (the consult leg) once B is there; when the call comes back
    A is unmuted and the consult leg closed.

    Args:
        session: A's connected session in the call room.
        mic: A's microphone source (published in the consult leg too).
        service: The transfer service.
    """

    def __init__(
        self, *, session: RtcSession, mic: rtc.AudioSource | None, service: TransferService
    ) -> None:
        super().__init__()
        self.session = session
        self._mic = mic
        self._service = service
        self.consult: RtcSession | None = None
        self.ticket: TransferTicket | None = None
        self.last: TransferSnapshot | None = None
        self._tasks = _Tasks()
        self._joining = False
        session.on("data", self._on_data)

    async def transfer(
        self,
        *,
        caller: str,
        to_agent: str,
        mode: Mode = "warm",
        transcript: tuple[TranscriptSegment, ...] = (),
        summary: SummaryCard | None = None,
    ) -> TransferTicket:
        """Start a transfer of this call to ``to_agent`` and put the caller on hold."""
        self.session.set_muted(True)
        try:
            ticket = await self._service.start_transfer(
                TransferRequest(
                    caller=caller,
                    from_agent=self.session.identity,
                    to_agent=to_agent,
                    call_room=self.session.room_name,
                    mode=mode,
                    transcript=transcript,
                    summary=summary,
                )
            )
        except BaseException:
            self.session.set_muted(False)
            raise
        self.ticket = ticket
        await self._apply(ticket.transfer)
        return ticket

    def _on_data(self, msg: DataMessage) -> None:
        if msg.topic != STATUS_TOPIC:
            return
        try:
            snap = TransferSnapshot.from_dict(msg.json())
        except SoftphoneError:
            log.warning("malformed transfer status ignored")
            return
        self._tasks.spawn(self._apply(snap))

    async def _apply(self, snap: TransferSnapshot) -> None:
        last = self.last
        same = last is not None and last.transfer_id == snap.transfer_id
        if same and last is not None and last.version >= snap.version:
            return  # status messages may arrive out of order
        self.last = snap
        self.emit("transfer_changed", snap)
        if snap.phase == "consulting" and self.consult is None and not self._joining:
            token = self.ticket.consult_token if self.ticket else None
            if token is not None:
                # Joining takes a moment; later changes (a cancel) must not wait for it.
                self._joining = True
                self._tasks.spawn(self._join_consult(token))
        elif snap.phase == "returned":
            self.session.set_muted(False)
            await self._leave_consult()
        elif snap.phase in ("completed", "ended"):
            await self._leave_consult()

    async def _join_consult(self, token: TokenGrant) -> None:
        try:
            if token.expires_at - time.time() < TOKEN_MARGIN_S:
                # Handed out at the start; a long ring can outlive it.
                token = await self._service.mint_token(
                    identity=token.identity, room=token.room, role="agent"
                )
            session = await _join(token, self._mic)
        except SoftphoneError:
            log.warning("could not join the consult leg")
            return
        finally:
            self._joining = False
        if self.last is None or self.last.phase not in ("consulting", "completing"):
            await session.aclose()  # the transfer ended while joining
            return
        self.consult = session
        self.emit("consult_joined", session)

    async def _leave_consult(self) -> None:
        consult, self.consult = self.consult, None
        if consult is not None:
            await consult.aclose()
            self.emit("consult_left", None)

    async def aclose(self) -> None:
        """Leave the consult leg and the call room."""
        await self._tasks.cancel()
        await self._leave_consult()
        await self.session.aclose()

    async def __aenter__(self) -> AgentCall:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
