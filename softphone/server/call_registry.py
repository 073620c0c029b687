"""The call registry: every call the service created, its rooms and its parties.

The service is the authority on who belongs where: tokens are minted only for
parties of a room (:meth:`CallRegistry.party_of`), transfers start only for a
registered call and its assigned agent, and room names are unguessable
(``call-`` or ``xfer-`` and 128 random bits), so a name reveals nothing and
cannot be probed.

The rules live here once (:class:`CallRegistry`); where the calls are kept is
a small storage interface: in memory for one process
(:class:`MemoryCallRegistry`), in Redis for the backend's replicas
(:class:`~softphone.server.redis_call_registry.RedisCallRegistry`), where every change is one optimistic
transaction (WATCH/MULTI) so two replicas never lose each other's updates.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

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
class StoredCall:
    """A call as a registry's storage keeps it (JSON in Redis)."""

    call_id: str
    room: str
    caller: str
    agent: str
    created_at: float
    created_by: str = ""
    # Consult room -> the agents of the transfer that opened it (A and B).
    consults: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    ended_at: float | None = None

    @property
    def rooms(self) -> set[str]:
        """The rooms that admit this call's parties (none once it ended)."""
        return set() if self.ended_at is not None else {self.room, *self.consults}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> StoredCall:
        data: dict[str, Any] = json.loads(raw)
        data["consults"] = {k: tuple(v) for k, v in data.get("consults", {}).items()}
        return cls(**data)

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


class CallRegistry(abc.ABC):
    """Calls, their rooms and parties; the source of truth for token and transfer checks.

    Subclasses keep the calls (:meth:`_insert`, :meth:`_load`, :meth:`_call_in`,
    :meth:`_update`, :meth:`_active`); the rules are the same everywhere.

    Args:
        clock: Wall clock for timestamps.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    # ---- storage -----------------------------------------------------------------

    @abc.abstractmethod
    async def _insert(self, call: StoredCall) -> None:
        """Store a new call, atomically checking the caller's and requester's limits.

        Raises:
            TransferError: The caller has an active call, or the requester too many.
        """

    @abc.abstractmethod
    async def _load(self, call_id: str) -> StoredCall | None:
        """The call ``call_id`` (active or recently ended)."""

    @abc.abstractmethod
    async def _call_in(self, room: str) -> StoredCall | None:
        """The active call one of whose rooms is ``room``."""

    @abc.abstractmethod
    async def _update(
        self, call_id: str, change: Callable[[StoredCall], None]
    ) -> StoredCall | None:
        """Apply ``change`` to the call atomically (rooms re-indexed); None if unknown."""

    @abc.abstractmethod
    async def _active(self) -> list[StoredCall]:
        """Every active call."""

    # ---- rules -------------------------------------------------------------------

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
        call = StoredCall(
            call_id=secrets.token_hex(12),
            room=unguessable_room("call"),
            caller=caller,
            agent=agent,
            created_at=self._clock(),
            created_by=requester,
        )
        await self._insert(call)
        return call.info()

    async def get(self, call_id: str) -> CallInfo:
        """The call ``call_id``.

        Raises:
            NotFoundError: No such call.
        """
        call = await self._load(call_id) if isinstance(call_id, str) and call_id else None
        if call is None:
            raise NotFoundError("call not found")
        return call.info()

    async def by_room(self, room: str) -> CallInfo | None:
        """The active call whose call room or consult room is ``room``."""
        call = await self._call_in(room)
        return call.info() if call is not None else None

    async def party_of(self, identity: str, room: str) -> PartyRole | None:
        """``identity``'s role in ``room`` of an active call, or None if it is no party.

        A caller is a party of its call room (it joins a transfer room with
        the grant the service's move instruction carries); an agent of the
        call room of a call assigned to it and of the consult rooms of its
        transfers (as A or as B).
        """
        call = await self._call_in(room)
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
        call = await self._call_in(room)
        return call is not None and call.room == room

    async def open_consult(
        self, call_id: str, room: str, *, from_agent: str, to_agent: str
    ) -> None:
        """Register ``room`` as a transfer room of the call, for A, B and (later) the caller.

        Raises:
            NotFoundError: No such call.
        """

        def change(call: StoredCall) -> None:
            # Not a caller room yet: the caller joins it on standby and when
            # moved, with grants the service sends; it may not ask for one.
            call.consults[room] = (from_agent, to_agent)

        if await self._update(call_id, change) is None:
            raise NotFoundError("call not found")

    async def close_consult(self, call_id: str, room: str) -> None:
        """The transfer in ``room`` ended without moving the call there."""
        await self._update(call_id, lambda call: call.consults.pop(room, None) and None)

    async def hand_over(self, call_id: str, *, room: str, agent: str) -> CallInfo:
        """The call now lives in ``room`` with ``agent`` (a completed transfer).

        Raises:
            NotFoundError: No such call.
        """

        def change(call: StoredCall) -> None:
            call.consults.pop(room, None)
            call.room, call.agent = room, agent

        call = await self._update(call_id, change)
        if call is None:
            raise NotFoundError("call not found")
        return call.info()

    async def end(self, call_id: str) -> CallInfo:
        """Mark the call ended; its rooms admit nobody any more.

        Raises:
            NotFoundError: No such call.
        """
        now = self._clock()

        def change(call: StoredCall) -> None:
            if call.ended_at is None:
                call.ended_at = now

        call = await self._update(call_id, change)
        if call is None:
            raise NotFoundError("call not found")
        return call.info()

    async def calls(self, *, identity: str | None = None) -> list[CallInfo]:
        """Active calls; only those ``identity`` is a party of, when given."""
        out = []
        for c in await self._active():
            agents = {c.agent} | {a for pair in c.consults.values() for a in pair}
            if identity is None or identity == c.caller or identity in agents:
                out.append(c.info())
        return sorted(out, key=lambda c: c.created_at)


def check_limits(call: StoredCall, callers_call: StoredCall | None, by_requester: int) -> None:
    """Refuse a new call whose caller has one already, or whose requester has too many.

    Raises:
        TransferError: Either limit is reached.
    """
    if callers_call is not None and callers_call.ended_at is None:
        raise TransferError(
            "this caller already has an active call", details={"call_id": callers_call.call_id}
        )
    if call.created_by and by_requester >= MAX_ACTIVE_PER_REQUESTER:
        raise TransferError("too many active calls created by this key")


class MemoryCallRegistry(CallRegistry):
    """The registry of one process (embedded mode, tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock)
        self._calls: dict[str, StoredCall] = {}
        self._by_room: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def _insert(self, call: StoredCall) -> None:
        async with self._lock:
            self._forget_ended()
            active = [c for c in self._calls.values() if c.ended_at is None]
            callers = next((c for c in active if c.caller == call.caller), None)
            by_requester = sum(1 for c in active if c.created_by == call.created_by)
            check_limits(call, callers, by_requester)
            self._calls[call.call_id] = call
            self._by_room[call.room] = call.call_id

    def _forget_ended(self) -> None:
        # Ended calls are kept a while for late status questions, not forever.
        cutoff = self._clock() - ENDED_KEPT_S
        for call_id in [k for k, c in self._calls.items() if c.ended_at and c.ended_at < cutoff]:
            del self._calls[call_id]

    async def _load(self, call_id: str) -> StoredCall | None:
        call = self._calls.get(call_id)
        return dataclasses.replace(call, consults=dict(call.consults)) if call else None

    async def _call_in(self, room: str) -> StoredCall | None:
        call_id = self._by_room.get(room)
        return await self._load(call_id) if call_id is not None else None

    async def _update(
        self, call_id: str, change: Callable[[StoredCall], None]
    ) -> StoredCall | None:
        async with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                return None
            before = call.rooms
            change(call)
            for room in before - call.rooms:
                if self._by_room.get(room) == call_id:
                    del self._by_room[room]
            for room in call.rooms:
                self._by_room[room] = call_id
            return dataclasses.replace(call, consults=dict(call.consults))

    async def _active(self) -> list[StoredCall]:
        return [c for c in self._calls.values() if c.ended_at is None]
