"""One leg of a call as a window has it: a joined room, our mic in it, its audio on our speaker.

Joins a room with :class:`RtcSession`, publishes the window's microphone
source (unless listening only), and plays every remote audio track on the
window's speaker until the leg is closed. An app holds one leg per room it is
in (the agent's call leg and consult leg, the supervisor's monitored room).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType

from softphone.media.devices import AudioDevices
from softphone.media.session import RemoteAudio, RtcSession


class CallLeg:
    """A room joined with the window's devices.

    Use as ``async with CallLeg(url=..., token=..., devices=...) as leg:``.

    Args:
        url: The LiveKit server URL.
        token: Access token for one identity in one room.
        devices: The window's microphone and speaker.
        publish: Publish the microphone (False: listen only, e.g. a supervisor).
        muted: Start muted.
        session: A session another component already connected (a transfer
            helper moved us); :meth:`adopt` then plays it without joining again.
        token_source: Gives a fresh token for this room, should the session
            have to rejoin after its own expired (see :class:`RtcSession`).
    """

    def __init__(
        self,
        *,
        url: str = "",
        token: str = "",
        devices: AudioDevices,
        publish: bool = True,
        muted: bool = False,
        session: RtcSession | None = None,
        token_source: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.session = session or RtcSession(url=url, token=token, token_source=token_source)
        self._devices = devices
        self._publish = publish
        self.session.set_muted(muted)
        self._tasks: set[asyncio.Task[None]] = set()
        self._played: set[str] = set()
        self._offs = [self.session.on("remote_audio_ended", self._on_audio_ended)]

    @property
    def room_name(self) -> str:
        """The room of this leg."""
        return self.session.room_name

    @property
    def publishing(self) -> bool:
        """Whether our microphone is published in this room."""
        return self._publish

    async def connect(self) -> CallLeg:
        """Join, publish the mic and start playing the room's audio.

        Raises:
            MediaError: The room could not be joined or the mic not published.
        """
        await self.session.connect()
        if self._publish:
            await self.publish_mic()
        return await self.adopt()

    async def adopt(self) -> CallLeg:
        """Start playing the audio of an already connected ``session``."""
        task = asyncio.get_running_loop().create_task(self._play_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self

    async def publish_mic(self) -> None:
        """Publish the window's microphone in this room (after listening only)."""
        assert self._devices.mic is not None, "AudioDevices.start() first"
        await self.session.publish_audio(self._devices.mic.source)
        self._publish = True

    async def unpublish_mic(self) -> None:
        """Stop sending our microphone to this room."""
        await self.session.unpublish_audio()
        self._publish = False

    async def _play_all(self) -> None:
        async for audio in self.session.remote_audio():
            self._played.add(audio.sid)
            self._devices.speaker.add(audio)

    def _on_audio_ended(self, audio: RemoteAudio) -> None:
        self._played.discard(audio.sid)
        self._devices.speaker.remove(audio.sid)

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute our microphone in this room."""
        self.session.set_muted(muted)

    async def aclose(self) -> None:
        """Leave the room and stop playing its audio."""
        for off in self._offs:
            off()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sid in list(self._played):
            self._devices.speaker.remove(sid)
        with contextlib.suppress(Exception):
            await self.session.aclose()

    async def __aenter__(self) -> CallLeg:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
