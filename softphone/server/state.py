"""Live service state: in this process (embedded), or in Redis shared by the backend's replicas.

What one replica knows, every replica must: the state of each transfer (its
snapshot, written only forwards by version), which transfer runs in a call
room, which replica drives each running transfer (a renewable lease), and the
events every long-poll and event stream waits on. Redis is the field's part
for exactly this: keys with expiry for leases, Lua scripts for compare-and-set,
pub/sub for fan-out. One process (the embedded mode) keeps the same in memory.

A request for a transfer that another replica drives (accept, complete...) is
forwarded to it over its own pub/sub channel and answered through a list the
asking replica waits on; a replica that no longer answers loses its leases
when they expire, and another one takes its transfers over. A replica that
died (its process gone, so Redis closed its connections) is known at once:
nobody listens on its request channel any more (``PUBSUB NUMSUB``), and its
leases may be taken before they expire.

Key layout (``prefix`` defaults to ``softphone:``)::

    transfer:<id>        hash: version, data (snapshot JSON with call_id)
    transfers:active     set of running transfer ids
    room-transfer:<room> id of the transfer running in a call room
    lease:<id>           replica driving the transfer (expires)
    events               pub/sub: every change, as JSON
    replica:<replica>    pub/sub: requests for that replica
    reply:<request>      list: the answer to one forwarded request
"""

from __future__ import annotations

import abc
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from softphone.domain.transfer import TransferSnapshot
from softphone.errors import NotFoundError, SoftphoneError

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventHandler = Callable[[Event], None]
# Handles a request forwarded by another replica: (method, args) -> JSON-able result.
RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


def new_replica_id() -> str:
    """A name for this process among the replicas."""
    return f"replica-{secrets.token_hex(6)}"


class StateError(SoftphoneError):
    """The shared state could not be reached (Redis down); worth retrying."""

    code = "state_unavailable"


class ServiceState(abc.ABC):
    """The service's live state, behind one interface for one process or many.

    Args:
        replica: This process's name among the replicas.
    """

    def __init__(self, *, replica: str | None = None) -> None:
        self.replica = replica or new_replica_id()
        self._listeners: list[EventHandler] = []
        self._serve: RequestHandler | None = None

    # ---- transfers -------------------------------------------------------------

    @abc.abstractmethod
    async def put_transfer(self, snap: TransferSnapshot, *, call_id: str) -> bool:
        """Store ``snap`` unless a newer version is stored, then announce it.

        Returns:
            Whether it was stored (an older version never overwrites a newer one).
        """

    @abc.abstractmethod
    async def get_transfer(self, transfer_id: str) -> tuple[TransferSnapshot, str] | None:
        """The latest snapshot of a transfer and its call id, if known."""

    @abc.abstractmethod
    async def claim_room(self, room: str, transfer_id: str) -> str | None:
        """Mark ``transfer_id`` as running in call room ``room``.

        Returns:
            None if claimed; else the id of the transfer already running there.
        """

    @abc.abstractmethod
    async def free_room(self, room: str, transfer_id: str) -> None:
        """The transfer no longer runs in ``room`` (only if it is still the one)."""

    @abc.abstractmethod
    async def room_transfer(self, room: str) -> str | None:
        """The transfer running in call room ``room``, if any."""

    # ---- leases ------------------------------------------------------------------

    @abc.abstractmethod
    async def take_lease(
        self, transfer_id: str, ttl_s: float, *, from_replica: str | None = None
    ) -> bool:
        """Become the replica driving ``transfer_id`` if no replica is, or if
        ``from_replica`` (found gone) still holds it."""

    @abc.abstractmethod
    async def renew_leases(self, transfer_ids: list[str], ttl_s: float) -> set[str]:
        """Extend this replica's leases; returns the ids whose lease it lost."""

    @abc.abstractmethod
    async def drop_lease(self, transfer_id: str) -> None:
        """Give up the lease (the transfer is over)."""

    @abc.abstractmethod
    async def lease_owner(self, transfer_id: str) -> str | None:
        """The replica driving ``transfer_id``, if its lease is alive."""

    @abc.abstractmethod
    async def orphans(self) -> dict[str, str | None]:
        """Running transfers that no replica drives: id -> the gone replica
        still named on the lease, or None when the lease expired."""

    # ---- events and requests -----------------------------------------------------

    def on_event(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler`` for every event from any replica; returns an unsubscribe."""
        self._listeners.append(handler)
        return lambda: self._listeners.remove(handler)

    def _dispatch(self, event: Event) -> None:
        for handler in list(self._listeners):
            try:
                handler(event)
            except Exception:
                log.exception("event handler failed")

    @abc.abstractmethod
    async def publish(self, event: Event) -> None:
        """Send ``event`` to every replica's listeners (this one's included)."""

    def serve_requests(self, handler: RequestHandler) -> None:
        """Answer requests other replicas forward to this one with ``handler``."""
        self._serve = handler

    @abc.abstractmethod
    async def forward(
        self, replica: str, method: str, args: dict[str, Any], *, timeout_s: float
    ) -> Any:
        """Ask ``replica`` to run ``method``; its result, or its error re-raised.

        Raises:
            NotFoundError: No such replica is listening (it stopped).
            StateError: No answer in time.
        """

    async def start(self) -> None:
        """Connect and start listening."""
        return None

    async def ready(self) -> None:
        """Raise :class:`StateError` when the state cannot be reached."""
        return None

    async def aclose(self) -> None:
        """Stop listening and disconnect."""
        return None


class MemoryState(ServiceState):
    """The state of one process (embedded mode): nothing is shared, nothing forwarded."""

    def __init__(self, *, replica: str | None = None) -> None:
        super().__init__(replica=replica)
        self._transfers: dict[str, tuple[TransferSnapshot, str]] = {}
        self._rooms: dict[str, str] = {}
        self._leases: dict[str, float] = {}

    async def put_transfer(self, snap: TransferSnapshot, *, call_id: str) -> bool:
        held = self._transfers.get(snap.transfer_id)
        if held is not None and held[0].version >= snap.version:
            return False
        self._transfers[snap.transfer_id] = (snap, call_id)
        self._dispatch(transfer_event(snap, call_id))
        return True

    async def get_transfer(self, transfer_id: str) -> tuple[TransferSnapshot, str] | None:
        return self._transfers.get(transfer_id)

    async def claim_room(self, room: str, transfer_id: str) -> str | None:
        held = self._rooms.setdefault(room, transfer_id)
        return None if held == transfer_id else held

    async def free_room(self, room: str, transfer_id: str) -> None:
        if self._rooms.get(room) == transfer_id:
            del self._rooms[room]

    async def room_transfer(self, room: str) -> str | None:
        return self._rooms.get(room)

    async def take_lease(
        self, transfer_id: str, ttl_s: float, *, from_replica: str | None = None
    ) -> bool:
        self._leases[transfer_id] = time.monotonic() + ttl_s
        return True

    async def renew_leases(self, transfer_ids: list[str], ttl_s: float) -> set[str]:
        for transfer_id in transfer_ids:
            self._leases[transfer_id] = time.monotonic() + ttl_s
        return set()

    async def drop_lease(self, transfer_id: str) -> None:
        self._leases.pop(transfer_id, None)

    async def lease_owner(self, transfer_id: str) -> str | None:
        return self.replica if transfer_id in self._leases else None

    async def orphans(self) -> dict[str, str | None]:
        return {}  # one process: whatever runs, this process drives

    async def publish(self, event: Event) -> None:
        self._dispatch(event)

    async def forward(
        self, replica: str, method: str, args: dict[str, Any], *, timeout_s: float
    ) -> Any:
        raise NotFoundError("no other replica", details={"replica": replica})


def transfer_event(snap: TransferSnapshot, call_id: str) -> Event:
    """The event announcing ``snap`` (of the call ``call_id``) to every replica."""
    return {"type": "transfer", "call_id": call_id, "transfer": snap.to_dict()}
