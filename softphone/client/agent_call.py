"""Agent A's side of a call being transferred: hold, consult leg, return.

A's app plays the hold audio itself (:class:`~softphone.media.hold.HoldAudio`:
a track in the call room only the caller may hear, A's mic held muted) from
the moment A starts a transfer until it ends, however it ends. It follows
the transfer both through the service's status messages in the call room and
by long-polling the service (:class:`~softphone.client.transfer_watch.TransferWatch`);
when the service stops answering for 3 s while the caller waits on hold, A's
app returns to the caller by itself: the hold stops, the consult leg is left,
A's mic is live in the call room again, and ``transfer_lost`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Literal

from livekit import rtc

from softphone.client.commands import CommandGuard
from softphone.client.legs import (
    TaskSet,
    join_room,
)
from softphone.client.transfer_watch import LOST_AFTER_S, ServiceLost, TransferWatch
from softphone.domain.events import EventEmitter
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode, TransferSnapshot
from softphone.errors import MediaError, SoftphoneError
from softphone.media.hold import HoldAudio
from softphone.media.session import DataMessage, RtcSession
from softphone.protocol import (
    STATUS_TOPIC,
    TokenGrant,
    TransferRequest,
    TransferService,
    TransferTicket,
)

log = logging.getLogger(__name__)

AgentCallEvent = Literal["transfer_changed", "consult_joined", "consult_left", "transfer_lost"]
# A token this close to expiry is re-minted before use.
TOKEN_MARGIN_S = 10.0
# Phases in which the caller waits on hold in the call room: a lost service
# there sends A back to the caller. (Completing: the caller is moving; the
# move finishes or fails on the LiveKit side without the service.)
_ON_HOLD = ("preparing", "offering", "consulting")
# After returning on its own, A's app tells the service the transfer is
# cancelled once it answers again, for at most this long.
CANCEL_LATER_S = 60.0


class AgentCall(EventEmitter[AgentCallEvent]):
    """Agent A's side of a call: starts a transfer and follows it.

    While the caller is on hold A's mic is held muted in the call room (A's
    voice must not reach the caller) and A's app plays the hold tone to the
    caller; in warm modes A joins the transfer room as a second session (the
    consult leg) once B is there; when the call comes back the hold stops, A's
    mic is live again and the consult leg closed.

    Args:
        session: A's connected session in the call room.
        mic: A's microphone source (published in the consult leg too).
        service: The transfer service.
        guard: Checks that transfer status messages come from the service
            (a participant's, or an unsigned one, is ignored).
        hold_audio: Play the hold tone from this app (the service then plays
            none: ``hold_audio=False`` on its side).
        lost_after_s: How long the service may stay silent during a transfer
            before A's app returns to the caller by itself.
    """

    def __init__(
        self,
        *,
        session: RtcSession,
        mic: rtc.AudioSource | None,
        service: TransferService,
        guard: CommandGuard,
        hold_audio: bool = True,
        lost_after_s: float = LOST_AFTER_S,
    ) -> None:
        super().__init__()
        self.session = session
        self._guard = guard
        self._mic = mic
        self._service = service
        self._hold_audio = hold_audio
        self._lost_after_s = lost_after_s
        self.consult: RtcSession | None = None
        self.ticket: TransferTicket | None = None
        self.last: TransferSnapshot | None = None
        self.hold: HoldAudio | None = None
        self._hold_started: asyncio.Task[None] | None = None
        self._watch: TransferWatch | None = None
        # Transfers A's app walked away from (the service was lost).
        self.abandoned: set[str] = set()
        self._tasks = TaskSet()
        self._joining = False
        session.on("data", self._on_data)

    @property
    def on_hold(self) -> bool:
        """Whether the caller is on hold (A's mic held, the hold tone playing or starting)."""
        return self.session.held

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
        self._start_hold(caller)
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
            await asyncio.shield(self._stop_hold())
            raise
        self.ticket = ticket
        await self._apply(ticket.transfer)
        if ticket.transfer.active:
            await self._follow(ticket.transfer)
        return ticket

    # ---- hold ----------------------------------------------------------------------
    def _start_hold(self, caller: str) -> None:
        """Hold A's mic at once; publish the hold tone in the background."""
        self.session.hold_mic(True)
        if self._hold_audio and self.hold is None:
            hold = HoldAudio(self.session, caller=caller)
            self.hold = hold
            self._hold_started = self._tasks.spawn(self._publish_hold(hold))

    @staticmethod
    async def _publish_hold(hold: HoldAudio) -> None:
        try:
            await hold.start()
        except MediaError:
            log.warning("hold audio unavailable; the caller waits in silence")

    async def _stop_hold(self) -> None:
        """End the hold however the transfer ended: the tone stops, A's mic is live again."""
        hold, self.hold = self.hold, None
        started, self._hold_started = self._hold_started, None
        if started is not None and not started.done():
            # Publishing is not cancelled half-way (the track would be left
            # behind); it is quick, and closing undoes it right after.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(started)
        if hold is not None:
            await hold.aclose()
        self.session.hold_mic(False)

    # ---- following the transfer ----------------------------------------------------
    async def _follow(self, snap: TransferSnapshot) -> None:
        await self._stop_watch()
        self._watch = TransferWatch(
            service=self._service,
            transfer_id=snap.transfer_id,
            on_snapshot=lambda s: self._tasks.spawn(self._apply(s)),
            on_lost=lambda lost: self._tasks.spawn(self._service_lost(lost)),
            after_version=snap.version,
            phase=snap.phase,
            lost_after_s=self._lost_after_s,
        ).start()

    async def _stop_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.aclose()

    def _on_data(self, msg: DataMessage) -> None:
        if msg.topic != STATUS_TOPIC:
            return
        try:
            body = self._guard.data(self.session, msg, STATUS_TOPIC)
        except SoftphoneError:
            return  # not from the service (the guard logged it)
        try:
            snap = TransferSnapshot.from_dict(body)
        except (SoftphoneError, KeyError, TypeError, ValueError):
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
        if snap.transfer_id in self.abandoned:
            return  # A is back with the caller; the service's late news changes nothing
        if snap.phase == "consulting" and self.consult is None and not self._joining:
            token = self.ticket.consult_token if self.ticket else None
            if token is not None:
                # Joining takes a moment; later changes (a cancel) must not wait for it.
                self._joining = True
                self._tasks.spawn(self._join_consult(token))
        elif snap.phase in ("returned", "completed", "ended"):
            await self._stop_hold()
            await self._leave_consult()

    async def _service_lost(self, lost: ServiceLost) -> None:
        """The service is gone while the caller waits: A goes back to the caller by itself."""
        snap = self.last
        if snap is None or snap.transfer_id != lost.transfer_id or snap.phase not in _ON_HOLD:
            return
        self.abandoned.add(lost.transfer_id)
        await self._stop_hold()
        await self._leave_consult()
        self.emit("transfer_lost", lost)
        # Should the service come back, it must not carry on without A.
        self._tasks.spawn(self._cancel_when_back(lost.transfer_id))

    async def _cancel_when_back(self, transfer_id: str) -> None:
        deadline = time.monotonic() + CANCEL_LATER_S
        while time.monotonic() < deadline:
            try:
                await self._service.cancel(transfer_id, agent=self.session.identity)
                return
            except SoftphoneError as exc:
                if not exc.retryable:
                    return  # it answered (already over, or unknown): nothing to undo
            await asyncio.sleep(1.0)

    async def _join_consult(self, token: TokenGrant) -> None:
        try:
            if token.expires_at - time.time() < TOKEN_MARGIN_S:
                # Handed out at the start; a long ring can outlive it.
                token = await self._service.mint_token(
                    identity=token.identity, room=token.room, role="agent"
                )
            session = await join_room(token, self._mic)
        except SoftphoneError:
            log.warning("could not join the consult leg")
            return
        finally:
            self._joining = False
        last = self.last
        if (
            last is None
            or last.phase not in ("consulting", "completing")
            or (last.transfer_id in self.abandoned)
        ):
            await session.aclose()  # the transfer ended (or was left) while joining
            return
        self.consult = session
        self.emit("consult_joined", session)

    async def _leave_consult(self) -> None:
        consult, self.consult = self.consult, None
        if consult is not None:
            await consult.aclose()
            self.emit("consult_left", None)

    async def aclose(self) -> None:
        """Stop the hold, leave the consult leg and the call room."""
        await self._stop_watch()
        await self._stop_hold()
        await self._tasks.cancel()
        await self._leave_consult()
        await self.session.aclose()

    async def __aenter__(self) -> AgentCall:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
