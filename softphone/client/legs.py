"""What every role's app does with the rooms a service command sends it to.

Shared by :mod:`softphone.client.lobby`, :mod:`softphone.client.caller_mover`
and :mod:`softphone.client.agent_call`: parse a grant, join a room with the mic,
wait for the first audio, keep background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any

from livekit import rtc

from softphone.errors import MediaError, ValidationError
from softphone.media.session import RtcSession
from softphone.protocol import TokenGrant

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Moved:
    """This participant now talks in ``room`` (after a move or a bring-the-agent)."""

    room: str
    session: RtcSession
    gap_s: float


def parse_grant(payload: str) -> TokenGrant:
    """The token grant in an instruction's payload.

    Raises:
        ValidationError: Not a grant.
    """
    try:
        data = json.loads(payload)
        return TokenGrant.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValidationError("payload", "not a token grant") from exc


async def join_room(grant: TokenGrant, mic: rtc.AudioSource | None) -> RtcSession:
    """Connect with ``grant`` and publish ``mic`` there (if any).

    Raises:
        MediaError: Could not connect or publish (nothing is left connected).
    """
    session = RtcSession(url=grant.url, token=grant.token)
    await session.connect()
    if mic is not None:
        try:
            await session.publish_audio(mic)
        except MediaError:
            await session.aclose()
            raise
    return session


async def answer_when_done(pending: dict[str, asyncio.Task[Any]], room: str) -> None:
    """Wait for the work an instruction started for ``room``; its failure is the RPC's answer.

    Shielded: a timed-out RPC handler must not cancel the work. A failed one
    is forgotten, so a repeated instruction tries again.
    """
    try:
        await asyncio.shield(pending[room])
    except MediaError as exc:
        pending.pop(room, None)
        raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, exc.message) from None


def finished_session(task: asyncio.Task[RtcSession]) -> RtcSession | None:
    """The session a finished connect task made; None while running or if it failed."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def go_live(session: RtcSession) -> None:
    """A standby session's mic: unmuted and open to everyone in the room."""
    session.set_muted(False)
    session.restrict_subscribers(None)


async def first_audio(session: RtcSession, timeout_s: float) -> None:
    async def first() -> None:
        async for _ in session.remote_audio():
            return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(first(), timeout_s)


class TaskSet:
    """Background tasks kept alive and cancelled on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transfer helper task failed", exc_info=task.exception())

    async def cancel(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
