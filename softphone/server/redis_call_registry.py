"""The call registry every backend replica shares, in Redis (see :mod:`softphone.server.call_registry`).

Its own module so that the desktop app, which keeps its calls in memory,
never imports the Redis client.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis import asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from softphone.server.call_registry import ENDED_KEPT_S, CallRegistry, StoredCall, check_limits
from softphone.server.state import StateError


class RedisCallRegistry(CallRegistry):
    """The registry every backend replica shares, in Redis.

    Keys (under ``prefix``): ``call:<id>`` (JSON; expires once ended),
    ``call-room:<room>`` (the active call of a room), ``caller-call:<caller>``,
    ``calls:active`` and ``requester:<identity>`` (sets of active call ids).

    Args:
        url: ``redis://`` URL.
        prefix: Key prefix shared with :class:`~softphone.server.state.RedisState`.
        clock: Wall clock for timestamps.
    """

    def __init__(
        self, *, url: str, prefix: str = "softphone:", clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock=clock)
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._p = prefix

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    async def _insert(self, call: StoredCall) -> None:
        caller_key = self._k("caller-call", call.caller)
        requester_key = self._k("requester", call.created_by)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(caller_key, requester_key)
                        held = await pipe.get(caller_key)
                        callers = await self._load(str(held)) if held else None
                        by_requester = await pipe.scard(requester_key) if call.created_by else 0
                        check_limits(call, callers, by_requester)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(self._k("call", call.call_id), call.to_json())
                        pipe.set(self._k("call-room", call.room), call.call_id)
                        pipe.set(caller_key, call.call_id)
                        pipe.sadd(self._k("calls", "active"), call.call_id)
                        if call.created_by:
                            pipe.sadd(requester_key, call.call_id)
                        await pipe.execute()
                        return
                    except WatchError:
                        continue
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc

    async def _load(self, call_id: str) -> StoredCall | None:
        raw = await self._get(self._k("call", call_id))
        return StoredCall.from_json(raw) if raw else None

    async def _call_in(self, room: str) -> StoredCall | None:
        call_id = await self._get(self._k("call-room", room))
        call = await self._load(call_id) if call_id else None
        return call if call is not None and room in call.rooms else None

    async def _get(self, key: str) -> str | None:
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc
        return str(value) if value is not None else None

    async def _update(
        self, call_id: str, change: Callable[[StoredCall], None]
    ) -> StoredCall | None:
        key = self._k("call", call_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            return None
                        call = StoredCall.from_json(str(raw))
                        before = call.rooms
                        change(call)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, call.to_json())
                        for room in before - call.rooms:
                            pipe.delete(self._k("call-room", room))
                        for room in call.rooms:
                            pipe.set(self._k("call-room", room), call_id)
                        if call.ended_at is not None:
                            pipe.expire(key, int(ENDED_KEPT_S))
                            pipe.srem(self._k("calls", "active"), call_id)
                            pipe.srem(self._k("requester", str(call.created_by)), call_id)
                            pipe.delete(self._k("caller-call", call.caller))
                        await pipe.execute()
                        return call
                    except WatchError:
                        continue
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc

    async def _active(self) -> list[StoredCall]:
        try:
            ids = sorted(await self._redis.smembers(self._k("calls", "active")))
            raws = await self._redis.mget([self._k("call", str(i)) for i in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise StateError("Redis cannot be reached", retryable=True) from exc
        calls = [StoredCall.from_json(str(r)) for r in raws if r]
        return [c for c in calls if c.ended_at is None]

    async def aclose(self) -> None:
        """Disconnect."""
        await self._redis.aclose()
