"""Hold audio from the agent's own app: a track in the call room only the caller may hear.

While a call is being transferred the caller waits on hold in the call room.
The hold tone used to come from a participant the service added to that room
for the purpose (one more connection per call on hold, from the service's
process). It now comes from a connection that exists anyway: agent A's
session in the call room publishes a second track, ``hold``, which the server
lets only the caller subscribe to (A's track subscription permissions), so
nobody else in the room (a supervisor, B brought there) receives or decodes
it. A's microphone is held muted meanwhile (:meth:`RtcSession.hold_mic`):
even A's own mute button cannot let A's voice reach the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from livekit import rtc

from softphone.errors import MediaError
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer

log = logging.getLogger(__name__)

HOLD_TRACK = "hold"
HOLD_FREQ_HZ = 330.0
# Frames of 100 ms: fewer wake-ups; a hold tone never changes pitch quickly.
HOLD_FRAME_MS = 100


class HoldAudio:
    """A hold tone published in ``session``'s room for ``caller`` alone, A's mic held muted.

    Use as ``async with HoldAudio(session, caller=...)``, or :meth:`start` and
    :meth:`aclose`. Closing puts back who may subscribe and releases the mic
    (muted again only if the agent had chosen so).

    Args:
        session: A's connected session in the call room.
        caller: The one identity that may hear the hold track.
        freq: The tone's frequency.
    """

    def __init__(self, session: RtcSession, *, caller: str, freq: float = HOLD_FREQ_HZ) -> None:
        self._session = session
        self._caller = caller
        self._freq = freq
        self._previous: tuple[str, ...] | None = session.subscribers
        self._tone: TonePlayer | None = None
        self._published = False
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def playing(self) -> bool:
        """Whether the hold track is published now."""
        return self._published and not self._closed

    async def start(self) -> HoldAudio:
        """Hold A's mic, then publish the tone for the caller only.

        The mic is held even when the track cannot be published: the caller
        then hears silence, never A.

        Raises:
            MediaError: The track could not be published.
        """
        async with self._lock:
            if self._started or self._closed:
                return self
            self._started = True
            self._session.hold_mic(True)
            # Who may subscribe first: the track is never open to everyone.
            self._session.restrict_subscribers([self._caller])
            source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=2 * HOLD_FRAME_MS)
            self._tone = TonePlayer(source, freq=self._freq, frame_ms=HOLD_FRAME_MS)
            self._tone.start()
            try:
                await self._session.publish_track(source, name=HOLD_TRACK)
            except MediaError:
                await self._tone.aclose()
                self._tone = None
                raise
            self._published = True
            return self

    async def aclose(self) -> None:
        """Stop the tone, unpublish it, put back who may subscribe, release the mic; idempotent."""
        async with self._lock:  # a start under way finishes first, then is undone
            if self._closed:
                return
            self._closed = True
            if self._published:
                with contextlib.suppress(MediaError):
                    await self._session.unpublish_track(HOLD_TRACK)
            if self._tone is not None:
                await self._tone.aclose()
            if self._started:
                self._session.restrict_subscribers(self._previous)
                self._session.hold_mic(False)

    async def __aenter__(self) -> HoldAudio:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
