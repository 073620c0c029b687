"""The service state shared by every replica, in Redis (see :mod:`softphone.server.state`).

Its own module so that the desktop app, which keeps its state in memory,
never imports the Redis client (about 120 ms of its startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from softphone.domain.transfer import TransferSnapshot
from softphone.errors import NotFoundError, SoftphoneError, TransferError
from softphone.server.state import Event, ServiceState, StateError, transfer_event

log = logging.getLogger(__name__)

# How long a finished transfer's state stays readable (late status questions).
FINISHED_KEPT_S = 3600
# How long a forwarded request's answer waits to be picked up.
REPLY_KEPT_S = 30

_ERRORS: dict[str, type[SoftphoneError]] = {
    cls.code: cls for cls in (TransferError, NotFoundError, SoftphoneError)
}


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
        event = json.dumps(transfer_event(snap, call_id))
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
