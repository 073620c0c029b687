"""The call registry: every call the service created, its rooms and its parties.

The service is the authority on who belongs where: tokens are minted only for
parties of a room (:meth:`CallRegistry.party_of`), transfers start only for a
registered call and its assigned agent, and room names are unguessable
(``call-`` or ``xfer-`` and 128 random bits), so a name reveals nothing and
cannot be probed.

Kept in memory behind a small async interface (one process; the backend's
replicas will keep it in Redis behind the same methods).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Literal

from softphone.domain.identifiers import validate_identity
from softphone.errors import NotFoundError, TransferError, ValidationError
from softphone.protocol import CallInfo

PartyRole = Literal["caller", "agent"]
# How long an ended call stays known (its history lives in the history store).
ENDED_KEPT_S = 3600.0
# Active calls one requester (a key's identity) may have created at once.
MAX_ACTIVE_PER_REQUESTER = 50


def unguessable_room(prefix: str) -> str:
    """A fresh room name: ``prefix``, a dash and 128 random bits (hex)."""
    return f"{prefix}-{secrets.token_hex(16)}"


@dataclasses.dataclass
class _Call:
    call_id: str
    room: str
    caller: str
    agent: str
    created_at: float
    created_by: str = ""
    # Consult room -> the agents of the transfer that opened it (A and B).
    consults: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    ended_at: float | None = None

    def info(self) -> CallInfo:
        return CallInfo(
            call_id=self.call_id,
            room=self.room,
            caller=self.caller,
            agent=self.agent,
            consult_rooms=tuple(self.consults),
            created_at=self.created_at,
            ended_at=self.ended_at,
        )


class CallRegistry:
    """Calls, their rooms and parties; the source of truth for token and transfer checks.

    Args:
        clock: Wall clock for timestamps.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._calls: dict[str, _Call] = {}
        self._by_room: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def create(self, *, caller: str, agent: str, requester: str = "") -> CallInfo:
        """Register a new call of ``caller`` assigned to ``agent``, in a new unguessable room.

        ``requester`` (who asked) may have at most :data:`MAX_ACTIVE_PER_REQUESTER`
        active calls: an agent or integrator key can name any caller, and must
        not fill the service's memory with calls.

        Raises:
            ValidationError: Bad identities, or caller and agent the same.
            TransferError: The caller already has an active call, or the
                requester too many.
        """
        validate_identity(caller, "caller")
        validate_identity(agent, "agent")
        if caller == agent:
            raise ValidationError("agent", "must not be the caller")
        async with self._lock:
            self._forget_ended()
            for c in self._calls.values():
                if c.caller == caller and c.ended_at is None:
                    raise TransferError(
                        "this caller already has an active call", details={"call_id": c.call_id}
                    )
            active = [c for c in self._calls.values() if c.ended_at is None]
            by_requester = sum(1 for c in active if requester and c.created_by == requester)
            if by_requester >= MAX_ACTIVE_PER_REQUESTER:
                raise TransferError("too many active calls created by this key")
            call = _Call(
                call_id=secrets.token_hex(12),
                room=unguessable_room("call"),
                caller=caller,
                agent=agent,
                created_at=self._clock(),
                created_by=requester,
            )
            self._calls[call.call_id] = call
            self._by_room[call.room] = call.call_id
            return call.info()

    def _forget_ended(self) -> None:
        # Ended calls are kept a while for late status questions, not forever.
        cutoff = self._clock() - ENDED_KEPT_S
        for call_id in [k for k, c in self._calls.items() if c.ended_at and c.ended_at < cutoff]:
            del self._calls[call_id]

    async def get(self, call_id: str) -> CallInfo:
        """The call ``call_id``.

        Raises:
            NotFoundError: No such call.
        """
        return self._get(call_id).info()

    def _get(self, call_id: str) -> _Call:
        call = self._calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            raise NotFoundError("call not found")
        return call

    async def by_room(self, room: str) -> CallInfo | None:
        """The active call whose call room or consult room is ``room``."""
        call = self._active_by_room(room)
        return call.info() if call is not None else None

    def _active_by_room(self, room: str) -> _Call | None:
        call_id = self._by_room.get(room)
        call = self._calls.get(call_id) if call_id is not None else None
        return call if call is not None and call.ended_at is None else None

    async def party_of(self, identity: str, room: str) -> PartyRole | None:
        """``identity``'s role in ``room`` of an active call, or None if it is no party.

        A caller is a party of its call room (it joins a transfer room with
        the grant the service's move instruction carries); an agent of the call room of a call assigned to it and of
        the consult rooms of its transfers (as A or as B).
        """
        call = self._active_by_room(room)
        if call is None:
            return None
        if identity == call.caller and room == call.room:
            return "caller"
        if room == call.room and identity == call.agent:
            return "agent"
        if identity in call.consults.get(room, ()):
            return "agent"
        return None

    async def is_call_room(self, room: str) -> bool:
        """Whether ``room`` is the call room of an active call."""
        call = self._active_by_room(room)
        return call is not None and call.room == room

    async def open_consult(
        self, call_id: str, room: str, *, from_agent: str, to_agent: str
    ) -> None:
        """Register ``room`` as a transfer room of the call, for A, B and (later) the caller."""
        async with self._lock:
            call = self._get(call_id)
            # Not a caller room yet: the caller joins it on standby and when
            # moved, with grants the service sends; it may not ask for one.
            call.consults[room] = (from_agent, to_agent)
            self._by_room[room] = call_id

    async def close_consult(self, call_id: str, room: str) -> None:
        """The transfer in ``room`` ended without moving the call there."""
        async with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                return
            call.consults.pop(room, None)
            if room != call.room and self._by_room.get(room) == call_id:
                del self._by_room[room]

    async def hand_over(self, call_id: str, *, room: str, agent: str) -> CallInfo:
        """The call now lives in ``room`` with ``agent`` (a completed transfer)."""
        async with self._lock:
            call = self._get(call_id)
            old = call.room
            call.consults.pop(room, None)
            call.room, call.agent = room, agent
            self._by_room[room] = call_id
            if old != room and self._by_room.get(old) == call_id:
                del self._by_room[old]
            return call.info()

    async def end(self, call_id: str) -> CallInfo:
        """Mark the call ended; its rooms admit nobody any more.

        Raises:
            NotFoundError: No such call.
        """
        async with self._lock:
            call = self._get(call_id)
            if call.ended_at is None:
                call.ended_at = self._clock()
            for room in [call.room, *call.consults]:
                if self._by_room.get(room) == call_id:
                    del self._by_room[room]
            return call.info()

    async def calls(self, *, identity: str | None = None) -> list[CallInfo]:
        """Active calls; only those ``identity`` is a party of, when given."""
        out = []
        for c in self._calls.values():
            if c.ended_at is not None:
                continue
            agents = {c.agent} | {a for pair in c.consults.values() for a in pair}
            if identity is None or identity == c.caller or identity in agents:
                out.append(c.info())
        return sorted(out, key=lambda c: c.created_at)
