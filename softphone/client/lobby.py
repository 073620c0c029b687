"""An agent online in the lobby: presence, live directory, offers, bring-the-agent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from types import TracebackType
from typing import Literal

from livekit import rtc

from softphone.client.commands import CommandGuard
from softphone.client.legs import (
    Moved,
    TaskSet,
    answer_when_done,
    first_audio,
    join_room,
)
from softphone.client.transfer_watch import LOST_AFTER_S, ServiceLost, TransferWatch, unreachable
from softphone.domain.events import EventEmitter
from softphone.domain.identifiers import validate_room_name
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment, unpack_transcript
from softphone.domain.transfer import Mode, TransferSnapshot
from softphone.errors import SoftphoneError, TransferError, ValidationError
from softphone.media.session import RtcSession
from softphone.protocol import (
    PRESENCE_ATTRIBUTE,
    PRESENCES,
    RPC_CALL_ASSIGNED,
    RPC_JOIN,
    RPC_OFFER,
    RPC_WITHDRAW,
    AgentEntry,
    CallInfo,
    Presence,
    TokenGrant,
    TransferService,
)

log = logging.getLogger(__name__)

# After bring-the-agent, the transfer room is left only this long after the
# caller's room is audible: the answer to the instruction goes out through it.
ANSWER_GRACE_S = 0.5

LobbyEvent = Literal[
    "offer",
    "offer_withdrawn",
    "directory_changed",
    "joined_room",
    "moved",
    "call_assigned",
    "consult_lost",
]


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
    """An offer that is gone before it was answered.

    ``reason`` is the service's (``caller_left``, ``cancelled``, ``no_answer``,
    ...), or this app's when the service could not say so: ``unreachable``
    (the service stopped answering while it rang, or when B accepted) and
    ``expired`` (the service says the offer is no longer open). ``message``
    says it in words for the user.
    """

    transfer_id: str
    reason: str
    message: str = ""


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
        guard: Checks that offers, withdrawals and join instructions come from
            the service (anything else is refused with no effect).
        mic: The agent's microphone source, published in call rooms (not the lobby).
        presence: Initial presence.
        lost_after_s: An offer whose service has not answered this long is
            dropped (it could no longer be accepted).

    While an offer rings, the app follows its transfer at the service
    (:class:`~softphone.client.transfer_watch.TransferWatch`): an offer the
    service no longer holds open, or whose service stopped answering, is
    dropped with ``offer_withdrawn``, as is one that fails to be accepted
    for either reason. An accepted transfer is followed too: if the service
    stops answering before the caller is handed over, A's app goes back to
    the caller by itself, so this app leaves the transfer room rather than
    wait there alone, and says ``consult_lost`` (a
    :class:`~softphone.client.transfer_watch.ServiceLost`).
    """

    def __init__(
        self,
        *,
        lobby_token: str,
        url: str,
        service: TransferService,
        guard: CommandGuard,
        mic: rtc.AudioSource | None = None,
        presence: Presence = "available",
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        super().__init__()
        self._service = service
        self._lost_after_s = lost_after_s
        self._watches: dict[str, TransferWatch] = {}
        self._guard = guard
        self._mic = mic
        self._presence: Presence = presence
        self.lobby = RtcSession(url=url, token=lobby_token)
        self.offers: dict[str, Offer] = {}
        self._offered: set[str] = set()
        self.call_session: RtcSession | None = None
        # Bring-the-agent joins under way or done, by room: a repeated
        # instruction answers from the same join.
        self._joins: dict[str, asyncio.Task[RtcSession]] = {}
        self._tasks = TaskSet()
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
        self.lobby.register_rpc(RPC_CALL_ASSIGNED, self._on_call_assigned)
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
        data = self._guard.rpc(self.lobby, inv, RPC_OFFER)
        try:
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
        except (KeyError, TypeError, SoftphoneError):
            raise rtc.RpcError(
                rtc.RpcError.ErrorCode.APPLICATION_ERROR, "malformed offer"
            ) from None
        if offer.transfer_id in self._offered:
            return "ringing"  # the same offer again: the service did not get the first answer
        self._offered.add(offer.transfer_id)
        self.offers[offer.transfer_id] = offer
        self.emit("offer", offer)
        self._watch_offer(offer.transfer_id)
        return "ringing"

    def _watch_offer(self, transfer_id: str) -> None:
        """Follow a ringing offer's transfer, so a dead or closed offer stops ringing."""

        def changed(snap: TransferSnapshot) -> None:
            if snap.phase != "offering":
                code = snap.reason.code if snap.reason is not None else snap.phase
                self._drop(transfer_id, code, "the offer is no longer open")

        def lost(lost: ServiceLost) -> None:
            self._drop(
                transfer_id, "unreachable", f"{lost.message}: the offer can no longer be accepted"
            )

        self._watches[transfer_id] = TransferWatch(
            service=self._service,
            transfer_id=transfer_id,
            on_snapshot=changed,
            on_lost=lost,
            lost_after_s=self._lost_after_s,
        ).start()

    def _stop_watching(self, transfer_id: str) -> None:
        watch = self._watches.pop(transfer_id, None)
        if watch is not None:
            self._tasks.spawn(watch.aclose())

    def _drop(self, transfer_id: str, reason: str, message: str) -> None:
        """Forget a ringing offer and tell the UI why."""
        self._stop_watching(transfer_id)
        if self.offers.pop(transfer_id, None) is not None:
            log.info("offer dropped", extra={"transfer_id": transfer_id, "reason": reason})
            self.emit("offer_withdrawn", Withdrawn(transfer_id, reason, message))

    async def _on_call_assigned(self, inv: rtc.RpcInvocationData) -> str:
        # The service assigned a new call to this agent (its room is in the body).
        data = self._guard.rpc(self.lobby, inv, RPC_CALL_ASSIGNED)
        try:
            call = CallInfo.from_dict(data)
            validate_room_name(call.room)
        except (KeyError, TypeError, ValueError, SoftphoneError):
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, "malformed") from None
        self.emit("call_assigned", call)
        return "ok"

    async def _on_withdraw(self, inv: rtc.RpcInvocationData) -> str:
        data = self._guard.rpc(self.lobby, inv, RPC_WITHDRAW)
        try:
            tid, reason = str(data["transfer_id"]), str(data.get("reason", ""))
        except (KeyError, TypeError):
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, "malformed") from None
        self._stop_watching(tid)
        if self.offers.pop(tid, None) is not None:
            self.emit("offer_withdrawn", Withdrawn(tid, reason, "the offer was withdrawn"))
        return "ok"

    async def accept(self, transfer_id: str) -> RtcSession:
        """Accept an offer: get a token from the service and join the transfer room.

        An offer that cannot be accepted any more is dropped (``offer_withdrawn``).

        Raises:
            TransferError: The service could not be reached (the offer is
                dropped; the message says so).
            SoftphoneError: The service refused (e.g. the offer was withdrawn).
        """
        self._stop_watching(transfer_id)
        offer = self.offers.pop(transfer_id, None)
        try:
            grant = await self._service.accept(transfer_id, agent=self.identity)
        except SoftphoneError as exc:
            gone = unreachable(exc)
            if offer is not None:
                self.offers[transfer_id] = offer  # _drop forgets it and tells the UI
                self._drop(
                    transfer_id,
                    "unreachable" if gone else "expired",
                    "the call service could not be reached: the offer can no longer be accepted"
                    if gone
                    else f"the offer is no longer open: {exc.message}",
                )
            if gone:
                raise TransferError(
                    "the call service could not be reached; the offer was dropped",
                    retryable=False,
                    details={"transfer_id": transfer_id},
                ) from exc
            raise
        session = await join_room(grant, self._mic)
        session.register_rpc(RPC_JOIN, functools.partial(self._on_join, session))
        self.call_session = session
        self._watch_accepted(transfer_id)
        with contextlib.suppress(SoftphoneError, Exception):
            await self.set_presence("busy")
        self.emit("joined_room", session)
        return session

    def _watch_accepted(self, transfer_id: str) -> None:
        """Follow an accepted transfer until it is over or its service is lost."""

        def lost(lost: ServiceLost) -> None:
            self._watches.pop(transfer_id, None)
            if lost.phase == "completing":
                return  # the caller may be on the way here: stay and take the call
            log.warning("service lost mid-consult", extra={"transfer_id": transfer_id})
            self._tasks.spawn(self._leave_lost(lost))

        self._watches[transfer_id] = TransferWatch(
            service=self._service,
            transfer_id=transfer_id,
            on_snapshot=lambda _snap: None,
            on_lost=lost,
            phase="consulting",
            lost_after_s=self._lost_after_s,
        ).start()

    async def _leave_lost(self, lost: ServiceLost) -> None:
        await self.leave_call()
        self.emit("consult_lost", lost)

    async def decline(self, transfer_id: str, reason: str = "") -> None:
        """Decline an offer, with a reason A will see."""
        self._stop_watching(transfer_id)
        self.offers.pop(transfer_id, None)
        await self._service.decline(transfer_id, agent=self.identity, reason=reason)

    async def _on_join(self, session: RtcSession, inv: rtc.RpcInvocationData) -> str:
        """Bring-the-agent: the caller could not move, so this agent goes to R1.

        The join runs as its own task: the service sends the instruction
        again when an answer did not get through, and that must find the
        same join, neither cancelled nor started twice. The service judges
        the arrival by this agent talking in R1, not by the answer.
        """
        grant = self._guard.grant(self._guard.rpc(session, inv, RPC_JOIN))
        if grant.room not in self._joins:
            self._joins[grant.room] = self._tasks.spawn(self._join(grant, session))
        await answer_when_done(self._joins, grant.room)
        return "joined"

    async def _join(self, grant: TokenGrant, old: RtcSession) -> RtcSession:
        started = time.monotonic()
        new = await join_room(grant, self._mic)
        self.call_session = new
        self._tasks.spawn(self._close_when_audible(old, new))
        self.emit("moved", Moved(grant.room, new, time.monotonic() - started))
        return new

    @staticmethod
    async def _close_when_audible(old: RtcSession, new: RtcSession) -> None:
        # Answer the instruction first, leave the old room once the new one is
        # audible and the answer had time to go out through it.
        try:
            await first_audio(new, 1.0)
            await asyncio.sleep(ANSWER_GRACE_S)
        finally:
            await old.aclose()

    async def leave_call(self) -> None:
        """Leave the current call room and become available again."""
        for transfer_id in [t for t in self._watches if t not in self.offers]:
            self._stop_watching(transfer_id)  # an accepted transfer: no longer ours to follow
        session, self.call_session = self.call_session, None
        if session is not None:
            await session.aclose()
        with contextlib.suppress(Exception):
            await self.set_presence("available")

    async def aclose(self) -> None:
        """Leave every room."""
        watches, self._watches = list(self._watches.values()), {}
        for watch in watches:
            await watch.aclose()
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
