"""Agent A's side of a call being transferred: hold, consult leg, return."""

from __future__ import annotations

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
from softphone.domain.events import EventEmitter
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode, TransferSnapshot
from softphone.errors import SoftphoneError
from softphone.media.session import DataMessage, RtcSession
from softphone.protocol import (
    STATUS_TOPIC,
    TokenGrant,
    TransferRequest,
    TransferService,
    TransferTicket,
)

log = logging.getLogger(__name__)

AgentCallEvent = Literal["transfer_changed", "consult_joined", "consult_left"]
# A token this close to expiry is re-minted before use.
TOKEN_MARGIN_S = 10.0


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
        guard: Checks that transfer status messages come from the service
            (a participant's, or an unsigned one, is ignored).
    """

    def __init__(
        self,
        *,
        session: RtcSession,
        mic: rtc.AudioSource | None,
        service: TransferService,
        guard: CommandGuard,
    ) -> None:
        super().__init__()
        self.session = session
        self._guard = guard
        self._mic = mic
        self._service = service
        self.consult: RtcSession | None = None
        self.ticket: TransferTicket | None = None
        self.last: TransferSnapshot | None = None
        self._tasks = TaskSet()
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
            session = await join_room(token, self._mic)
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
