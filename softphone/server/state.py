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
import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from softphone.domain.transfer import TransferSnapshot
from softphone.errors import NotFoundError, SoftphoneError, TransferError

log = logging.getLogger(__name__)

Event = dict[str, Any]
EventHandler = Callable[[Event], None]
# Handles a request forwarded by another replica: (method, args) -> JSON-able result.
RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]

# How long a finished transfer's state stays readable (late status questions).
FINISHED_KEPT_S = 3600
# How long a forwarded request's answer waits to be picked up.
REPLY_KEPT_S = 30

_ERRORS: dict[str, type[SoftphoneError]] = {
    cls.code: cls for cls in (TransferError, NotFoundError, SoftphoneError)
}


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
        self._dispatch(_transfer_event(snap, call_id))
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


def _transfer_event(snap: TransferSnapshot, call_id: str) -> Event:
    return {"type": "transfer", "call_id": call_id, "transfer": snap.to_dict()}


# Stores the snapshot only if its version is newer; keeps the active set and
# announces the change, all in one step no other replica can interleave with.
_PUT_TRANSFER = """
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PERSIST', KEYS[1])
else
  redis.call('SREM', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
redis.call('PUBLISH', KEYS[3], ARGV[6])
return 1
"""
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Takes a lease nobody holds, or one still held by a replica that is gone:
# nobody listens on its request channel (KEYS[2]).
_TAKE_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur ~= ARGV[2] then return 0 end
  if redis.call('PUBSUB', 'NUMSUB', KEYS[2])[2] > 0 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""


class RedisState(ServiceState):
    """The state shared by every replica, in Redis.

    Args:
        url: ``redis://`` URL (its password, if any, is never logged).
        prefix: Key prefix, so several deployments (or test runs) share a Redis.
        replica: This process's name among the replicas.
    """

    def __init__(self, *, url: str, prefix: str = "softphone:", replica: str | None = None) -> None:
        super().__init__(replica=replica)
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._p = prefix
        self._put = self._redis.register_script(_PUT_TRANSFER)
        self._delete_if = self._redis.register_script(_DELETE_IF)
        self._renew = self._redis.register_script(_RENEW)
        self._take = self._redis.register_script(_TAKE_LEASE)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._handling: set[asyncio.Task[None]] = set()

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def start(self) -> None:
        await self.ready()
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 10.0)

    async def ready(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc

    async def _listen(self) -> None:
        """One subscription per replica: every event, and the requests for this replica."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._k("events"), self._k("replica", self.replica))
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                # Soon: while it is away, other replicas may think this one gone.
                log.warning("lost the Redis subscription; subscribing again")
                await asyncio.sleep(0.05)

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            body = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        if not isinstance(body, dict):
            return
        if message.get("channel") == self._k("events"):
            self._dispatch(body)
            return
        task = asyncio.get_running_loop().create_task(self._answer(body))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _answer(self, request: dict[str, Any]) -> None:
        reply_to = request.get("reply")
        if not isinstance(reply_to, str) or self._serve is None:
            return
        answer: dict[str, Any]
        try:
            result = await self._serve(str(request.get("method")), dict(request.get("args") or {}))
            answer = {"ok": result}
        except SoftphoneError as exc:
            answer = {"error": {"code": exc.code, "message": exc.message}}
        except Exception:
            log.exception("a forwarded request failed")
            answer = {"error": {"code": "error", "message": "internal error"}}
        key = self._k("reply", reply_to)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(answer))
            pipe.expire(key, REPLY_KEPT_S)
            with contextlib.suppress(RedisError, OSError):
                await pipe.execute()

    async def put_transfer(self, snap: TransferSnapshot, *, call_id: str) -> bool:
        event = json.dumps(_transfer_event(snap, call_id))
        data = json.dumps({"call_id": call_id, "snapshot": snap.to_dict()})
        stored = await self._run(
            self._put(
                keys=[
                    self._k("transfer", snap.transfer_id),
                    self._k("transfers", "active"),
                    self._k("events"),
                ],
                args=[
                    snap.version,
                    data,
                    "1" if snap.active else "0",
                    snap.transfer_id,
                    FINISHED_KEPT_S,
                    event,
                ],
            )
        )
        return bool(stored)

    async def get_transfer(self, transfer_id: str) -> tuple[TransferSnapshot, str] | None:
        raw = await self._run(self._redis.hget(self._k("transfer", transfer_id), "data"))
        if raw is None:
            return None
        data = json.loads(raw)
        return TransferSnapshot.from_dict(data["snapshot"]), str(data["call_id"])

    async def claim_room(self, room: str, transfer_id: str) -> str | None:
        key = self._k("room-transfer", room)
        if await self._run(self._redis.set(key, transfer_id, nx=True)):
            return None
        held = await self._run(self._redis.get(key))
        return None if held == transfer_id else (held or "")

    async def free_room(self, room: str, transfer_id: str) -> None:
        await self._run(self._delete_if(keys=[self._k("room-transfer", room)], args=[transfer_id]))

    async def room_transfer(self, room: str) -> str | None:
        held = await self._run(self._redis.get(self._k("room-transfer", room)))
        return str(held) if held else None

    async def take_lease(
        self, transfer_id: str, ttl_s: float, *, from_replica: str | None = None
    ) -> bool:
        # An empty name never matches a holder: without from_replica, only a free lease.
        taken = self._take(
            keys=[self._k("lease", transfer_id), self._k("replica", from_replica or "")],
            args=[self.replica, from_replica or "", int(ttl_s * 1000)],
        )
        return bool(await self._run(taken))

    async def renew_leases(self, transfer_ids: list[str], ttl_s: float) -> set[str]:
        if not transfer_ids:
            return set()
        lost = await self._run(
            self._renew(
                keys=[self._k("lease", t) for t in transfer_ids],
                args=[self.replica, int(ttl_s * 1000)],
            )
        )
        return {transfer_ids[int(i) - 1] for i in lost}

    async def drop_lease(self, transfer_id: str) -> None:
        await self._run(self._delete_if(keys=[self._k("lease", transfer_id)], args=[self.replica]))

    async def lease_owner(self, transfer_id: str) -> str | None:
        owner = await self._run(self._redis.get(self._k("lease", transfer_id)))
        return str(owner) if owner else None

    async def orphans(self) -> dict[str, str | None]:
        active = sorted(await self._run(self._redis.smembers(self._k("transfers", "active"))))
        if not active:
            return {}
        owners = await self._run(self._redis.mget([self._k("lease", t) for t in active]))
        held = {str(o) for o in owners if o and o != self.replica}
        gone = set()
        if held:
            channels = {self._k("replica", o): o for o in held}
            listening = await self._run(self._redis.pubsub_numsub(*channels))
            gone = {channels[str(ch)] for ch, n in listening if not n}
        return {
            t: (str(owner) if owner else None)
            for t, owner in zip(active, owners, strict=True)
            if not owner or owner in gone
        }

    async def publish(self, event: Event) -> None:
        await self._run(self._redis.publish(self._k("events"), json.dumps(event)))

    async def forward(
        self, replica: str, method: str, args: dict[str, Any], *, timeout_s: float
    ) -> Any:
        request_id = secrets.token_hex(12)
        request = json.dumps({"method": method, "args": args, "reply": request_id})
        heard = await self._run(self._redis.publish(self._k("replica", replica), request))
        if not heard:
            raise NotFoundError("the replica driving it is gone", details={"replica": replica})
        answer = await self._run(
            self._redis.blpop([self._k("reply", request_id)], timeout=max(timeout_s, 0.1))
        )
        if answer is None:
            raise StateError("the replica driving it did not answer in time", retryable=True)
        body = json.loads(answer[1])
        if "error" in body:
            error = body["error"]
            cls = _ERRORS.get(str(error.get("code")), SoftphoneError)
            raise cls(str(error.get("message", "error")))
        return body.get("ok")

    @staticmethod
    async def _run(aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for task in list(self._handling):
            task.cancel()
        await self._redis.aclose()
