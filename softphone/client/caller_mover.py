"""The caller's side of a transfer: standby, then a make-before-break move."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from types import TracebackType
from typing import Any, Literal

from livekit import rtc

from softphone.client.commands import CommandGuard
from softphone.client.legs import (
    Moved,
    TaskSet,
    answer_when_done,
    finished_session,
    first_audio,
    go_live,
    join_room,
)
from softphone.domain.events import EventEmitter
from softphone.errors import MediaError
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import RemoteAudio, RtcSession
from softphone.protocol import (
    RPC_MOVE,
    RPC_STANDBY,
    TokenGrant,
)

log = logging.getLogger(__name__)

CallerEvent = Literal["joined", "moved"]
MoveStrategy = Literal["make_before_break", "break_before_make"]
# How long a move waits for the service's promotion of the standby session to
# arrive (it is sent before the move, on another channel, so it may trail it:
# by up to 3.3 s with 25 moves at once on 2 cores, where joining afresh
# instead then timed out). The caller hears A meanwhile; only a promotion the
# service failed to grant costs this wait before the fresh join.
PROMOTION_WAIT_S = 5.0
# The hold audio in the call room ended this long ago and did not come back
# (a reconnect brings it back at once): the transfer was abandoned.
HOLD_END_GRACE_S = 2.0
# A standby connection never promoted in this long is left in any case.
STANDBY_LIMIT_S = 900.0


async def _promoted(session: RtcSession, timeout_s: float) -> bool:
    """Whether ``session`` may listen, waiting up to ``timeout_s`` for the permission."""
    if session.may_listen:
        return True
    granted = asyncio.Event()
    off = session.on("may_listen", lambda ok: granted.set() if ok else None)
    try:
        async with asyncio.timeout(timeout_s):
            await granted.wait()
    except TimeoutError:
        pass
    finally:
        off()
    return session.may_listen


class CallerMover(EventEmitter[CallerEvent]):
    """The caller's side of a transfer: obeys ``transfer.move``.

    Takes ownership of ``session`` (the caller's session in R1): after a move,
    :attr:`session` is the session in R2 and the old one is closed.

    Args:
        session: The caller's connected session in the call room.
        mic: The caller's microphone source (published again in the new room).
        guard: Checks that standby and move instructions come from the service
            and name its own LiveKit server (anything else is refused).
        strategy: ``make_before_break`` (join and publish, then leave) or
            ``break_before_make`` (the naive order; for the benchmark).
        audible_timeout_s: Make-before-break waits at most this long for the
            first remote audio in the new room before leaving the old one.
        standby_limit_s: A standby connection not promoted in this long is left.

    A standby connection is left, too, when the transfer is abandoned: the
    hold audio in the call room ends (A came back to the caller, or the
    service that played it is gone) while the caller is still there and
    the standby was not promoted. Nobody else would tell the caller's app
    once the service is gone.

    Events: ``joined`` (the new session, before the old one is left) and
    ``moved`` (:class:`Moved`, once the move is done).
    """

    def __init__(
        self,
        *,
        session: RtcSession,
        mic: rtc.AudioSource | None,
        guard: CommandGuard,
        strategy: MoveStrategy = "make_before_break",
        audible_timeout_s: float = 1.0,
        standby_limit_s: float = STANDBY_LIMIT_S,
    ) -> None:
        super().__init__()
        self._standby_limit_s = standby_limit_s
        self.session = session
        self._guard = guard
        self._audible_timeout_s = audible_timeout_s
        self._tasks = TaskSet()
        self._mic = mic
        self._strategy = strategy
        self.moves: list[Moved] = []
        # Moves under way or done, by room: a repeated instruction joins the first.
        self._moving: dict[str, asyncio.Task[Any]] = {}
        # Standby connections to transfer rooms, by room (see _on_standby).
        self._standby: dict[str, asyncio.Task[RtcSession]] = {}
        # Sessions a move joined that are not yet :attr:`session` (hanging
        # up mid-move must leave them too).
        self._entering: set[RtcSession] = set()
        self._register(session)

    def _register(self, session: RtcSession) -> None:
        session.register_rpc(RPC_MOVE, functools.partial(self._on_move, session))
        if self._strategy == "make_before_break":  # the naive baseline joins from scratch
            session.register_rpc(RPC_STANDBY, functools.partial(self._on_standby, session))
            session.on("remote_audio_ended", functools.partial(self._on_audio_ended, session))

    def _on_audio_ended(self, session: RtcSession, audio: RemoteAudio) -> None:
        if audio.name == HOLD_TRACK and session is self.session and self._standby:
            self._tasks.spawn(self._leave_standby_if_abandoned(session, audio.identity))

    async def _leave_standby_if_abandoned(self, session: RtcSession, holder: str) -> None:
        """``holder``'s hold ended: unless it comes back or the standby is promoted, leave it.

        Only ``holder``'s hold counts: another one still there may be a dead
        service's, whose participant lingers until the server times it out.
        """
        await asyncio.sleep(HOLD_END_GRACE_S)
        if session is not self.session or not session.connected:
            return  # moved (or hung up) meanwhile
        if any(a.name == HOLD_TRACK and a.identity == holder for a in session.remote_tracks()):
            return  # back after a reconnect: still on hold
        for room in list(self._standby):
            await self._leave_standby(room, "the transfer was abandoned")

    async def _leave_standby(self, room: str, why: str) -> None:
        """Leave the standby connection to ``room`` unless it was promoted or is moving."""
        task = self._standby.get(room)
        if task is None or room in self._moving:
            return
        session = finished_session(task)
        if session is not None and session.may_listen:
            return  # promoted: the move is coming
        del self._standby[room]
        log.info("leaving the transfer room: %s", why, extra={"room": room})
        if session is not None:
            await session.aclose()
        else:
            task.cancel()  # still connecting: a connect given up on is left once done

    async def _standby_limit(self, room: str) -> None:
        await asyncio.sleep(self._standby_limit_s)
        await self._leave_standby(room, "never promoted")

    def standby(self, room: str) -> RtcSession | None:
        """The connected standby session in ``room``, if the app is waiting there."""
        task = self._standby.get(room)
        return finished_session(task) if task is not None else None

    async def _on_standby(self, session: RtcSession, inv: rtc.RpcInvocationData) -> str:
        """Connect to the transfer room ahead of the move, deaf and unheard.

        The standby grant lets this session not subscribe; the mic is
        published here at once, muted and with subscription permissions that
        admit only whom the command names (the agent taking the call, who
        so subscribes to the muted track during the consult and needs no
        negotiation once it is live). The service turns the grant into the caller's
        permissions when the transfer completes; the app unmutes and admits
        everyone as soon as it sees that (no negotiation, and no waiting for
        the move instruction, which confirms it). A repeated instruction
        finds the same connection.
        """
        body = self._guard.rpc(session, inv, RPC_STANDBY)
        grant, admit = self._guard.grant(body), self._guard.admitted(body)
        task = self._standby.get(grant.room)
        if task is None:
            task = self._tasks.spawn(self._connect_standby(grant, admit))
            self._standby[grant.room] = task
            self._tasks.spawn(self._standby_limit(grant.room))
        await answer_when_done(self._standby, grant.room)
        return "ready"

    async def _connect_standby(self, grant: TokenGrant, admit: list[str]) -> RtcSession:
        session = RtcSession(url=grant.url, token=grant.token)
        await session.connect()
        if self._mic is not None:
            session.restrict_subscribers(admit)
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
                    go_live(session)

            session.on("may_listen", promoted)

        def gone(_reason: object) -> None:
            # The transfer ended without a move: its room was closed under us.
            task = self._standby.get(grant.room)
            if task is not None and finished_session(task) is session:
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
        self._entering.add(session)
        if not session.connected or not await _promoted(session, PROMOTION_WAIT_S):
            # Not (yet) given the caller's permissions: it could speak but not
            # hear. The move's own grant joins afresh, make-before-break.
            log.info("standby session not promoted; joining afresh")
            self._entering.discard(session)
            await session.aclose()
            return None
        if self._mic is not None:
            go_live(session)
            if not session.publishing:
                try:
                    await session.publish_audio(self._mic)
                except MediaError:
                    log.info("standby session could not publish; joining afresh")
                    self._entering.discard(session)
                    await session.aclose()
                    return None
        return session

    async def _on_move(self, session: RtcSession, inv: rtc.RpcInvocationData) -> str:
        grant = self._guard.grant(self._guard.rpc(session, inv, RPC_MOVE))
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
        await answer_when_done(self._moving, grant.room)
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
        new = await self._take_standby(grant)
        if new is None:
            new = await join_room(grant, self._mic)
            self._entering.add(new)
        self._register(new)
        self.emit("joined", new)
        return new

    async def _leave_old(self, grant: TokenGrant, new: RtcSession, started: float) -> RtcSession:
        old = self.session
        if self._strategy == "make_before_break":
            # Leave only once the new room is audible (or after a short cap),
            # so the caller hears no gap.
            await first_audio(new, self._audible_timeout_s)
        await old.aclose()
        self.session = new
        self._entering.discard(new)
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
        """Hang up: leave the current room, any standby connection and a room a move joined."""
        standby = list(self._standby.values())
        self._standby.clear()
        await self._tasks.cancel()
        for task in standby:
            session = finished_session(task)
            if session is not None:
                await session.aclose()
        entering, self._entering = self._entering, set()
        for session in entering:
            await session.aclose()
        await self.session.aclose()

    async def __aenter__(self) -> CallerMover:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
