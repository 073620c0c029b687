"""One RTC session: a ``livekit.rtc.Room`` joined with a token.

The session connects, publishes an audio track from a given source, hands
out the audio of each remote participant as it arrives, surfaces connection
changes (reconnecting, reconnected, disconnected with a reason) as typed
events, and disconnects cleanly. An app can hold several at once (the agent's
call leg and consult leg).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from livekit import rtc

from softphone.domain.events import EventEmitter
from softphone.errors import MediaError, ValidationError

log = logging.getLogger(__name__)

SessionEvent = Literal[
    "connected",
    "reconnecting",
    "reconnected",
    "disconnected",
    "participant_joined",
    "participant_left",
    "participant_attributes_changed",
    "remote_audio",
    "remote_audio_ended",
    "room_metadata_changed",
    "data",
    "connection_quality",
    "may_listen",
]

SAMPLE_RATE = 48000
# Connects given up on (timeout, cancellation) that still run to completion.
_ABANDONED: set[asyncio.Future[None]] = set()
DISCONNECT_TIMEOUT_S = 5.0
UNPUBLISH_TIMEOUT_S = 2.0
# At most one mute change reaches the SDK per this interval (see set_muted).
MUTE_SETTLE_S = 0.1


@dataclasses.dataclass(frozen=True)
class RemoteAudio:
    """The audio track of one remote participant."""

    identity: str
    track: rtc.RemoteAudioTrack
    sid: str

    def stream(self, *, sample_rate: int = SAMPLE_RATE, frame_size_ms: int = 10) -> rtc.AudioStream:
        """A new stream of this track's frames (mono); close it with ``aclose()``."""
        return rtc.AudioStream.from_track(
            track=self.track,
            sample_rate=sample_rate,
            num_channels=1,
            frame_size_ms=frame_size_ms,
        )


@dataclasses.dataclass(frozen=True)
class DataMessage:
    """A data packet received in the room."""

    topic: str
    sender: str | None
    payload: bytes

    def json(self) -> Any:
        """The payload decoded as JSON.

        Raises:
            ValidationError: The payload is not valid UTF-8 JSON.
        """
        try:
            return json.loads(self.payload.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError("payload", "not valid JSON") from exc


@dataclasses.dataclass(frozen=True)
class Disconnected:
    """Why a session ended: ``client`` (we left), ``removed``, ``room_deleted``, ..."""

    reason: str


@dataclasses.dataclass(frozen=True)
class ParticipantChange:
    """A remote participant joined, left or changed attributes."""

    identity: str
    attributes: Mapping[str, str]
    kind: str


_REASONS = {
    rtc.DisconnectReason.CLIENT_INITIATED: "client",
    rtc.DisconnectReason.PARTICIPANT_REMOVED: "removed",
    rtc.DisconnectReason.ROOM_DELETED: "room_deleted",
    rtc.DisconnectReason.DUPLICATE_IDENTITY: "duplicate_identity",
    rtc.DisconnectReason.SERVER_SHUTDOWN: "server_shutdown",
    rtc.DisconnectReason.JOIN_FAILURE: "join_failure",
    rtc.DisconnectReason.ROOM_CLOSED: "room_closed",
    rtc.DisconnectReason.SIGNAL_CLOSE: "signal_closed",
}


def _kind(p: rtc.Participant) -> str:
    return "sip" if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP else "standard"


class RtcSession(EventEmitter[SessionEvent]):
    """A connection to one LiveKit room.

    Use as ``async with RtcSession(url=..., token=...) as session:``.

    Args:
        url: The LiveKit server URL.
        token: An access token for one identity in one room.
        connect_timeout_s: How long connecting may take.
        listen: Subscribe to the room's audio. A session that only plays
            something (hold audio) passes False: nothing it would never read
            is received and decoded.
    """

    def __init__(
        self, *, url: str, token: str, connect_timeout_s: float = 10.0, listen: bool = True
    ) -> None:
        super().__init__()
        self._url = url
        self._token = token
        self._timeout = connect_timeout_s
        self._listen = listen
        self.room = rtc.Room()
        self._mic: rtc.LocalAudioTrack | None = None
        self._mic_pub: rtc.LocalTrackPublication | None = None
        self._remote: dict[str, RemoteAudio] = {}
        self._audio_waiters: list[asyncio.Queue[RemoteAudio]] = []
        self._closed = False
        self._muted = False
        # What the SDK was last told, when, and a deferred change (set_muted).
        self._sent_muted = False
        self._mute_sent_at = 0.0
        self._mute_timer: asyncio.TimerHandle | None = None
        self.disconnect_reason: str | None = None
        self._wire()

    @property
    def identity(self) -> str:
        """Our own identity in the room."""
        return self.room.local_participant.identity

    @property
    def room_name(self) -> str:
        """The name of the room this session joined."""
        return self.room.name

    @property
    def connected(self) -> bool:
        """True while connected (including while reconnecting)."""
        return self.room.isconnected()

    @property
    def publishing(self) -> bool:
        """Whether a microphone track is published (muted or not)."""
        return self._mic_pub is not None

    @property
    def may_listen(self) -> bool:
        """Whether the server lets this participant subscribe (a standby caller: not yet)."""
        return bool(self.room.local_participant.permissions.can_subscribe)

    @property
    def muted(self) -> bool:
        """Whether the published audio track is muted."""
        return self._muted

    def remote_identities(self) -> list[str]:
        """Identities of the visible remote participants."""
        return list(self.room.remote_participants)

    def _wire(self) -> None:
        r = self.room

        @r.on("track_subscribed")
        def _sub(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            if isinstance(track, rtc.RemoteAudioTrack):
                audio = RemoteAudio(identity=p.identity, track=track, sid=pub.sid)
                self._remote[pub.sid] = audio
                for q in self._audio_waiters:
                    q.put_nowait(audio)
                self.emit("remote_audio", audio)

        @r.on("track_unsubscribed")
        def _unsub(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            audio = self._remote.pop(pub.sid, None)
            if audio is not None:
                self.emit("remote_audio_ended", audio)

        @r.on("participant_connected")
        def _joined(p: rtc.RemoteParticipant) -> None:
            self.emit(
                "participant_joined", ParticipantChange(p.identity, dict(p.attributes), _kind(p))
            )

        @r.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            self.emit(
                "participant_left", ParticipantChange(p.identity, dict(p.attributes), _kind(p))
            )

        @r.on("participant_attributes_changed")
        def _attrs(changed: dict[str, str], p: rtc.Participant) -> None:
            self.emit(
                "participant_attributes_changed",
                ParticipantChange(p.identity, dict(p.attributes), _kind(p)),
            )

        @r.on("room_metadata_changed")
        def _meta(old: str, new: str) -> None:
            self.emit("room_metadata_changed", new)

        @r.on("data_received")
        def _data(packet: rtc.DataPacket) -> None:
            sender = packet.participant.identity if packet.participant else None
            self.emit("data", DataMessage(packet.topic or "", sender, bytes(packet.data)))

        @r.on("reconnecting")
        def _reconnecting() -> None:
            self.emit("reconnecting")

        @r.on("reconnected")
        def _reconnected() -> None:
            self.emit("reconnected")

        @r.on("participant_permissions_changed")
        def _permissions(p: rtc.Participant, permission: Any) -> None:
            # Our own permissions, changed by the server API (a standby
            # caller promoted): payload is whether we may subscribe now.
            if p.identity == r.local_participant.identity:
                self.emit("may_listen", bool(permission.can_subscribe))

        @r.on("connection_quality_changed")
        def _quality(p: rtc.Participant, q: int) -> None:
            if p.identity == r.local_participant.identity:
                self.emit("connection_quality", int(q))

        @r.on("disconnected")
        def _disconnected(reason: rtc.DisconnectReason.ValueType) -> None:
            self.disconnect_reason = _REASONS.get(reason, "network")
            for q in self._audio_waiters:
                q.put_nowait(None)  # type: ignore[arg-type]
            self.emit("disconnected", Disconnected(self.disconnect_reason))

    async def connect(self) -> RtcSession:
        """Join the room.

        Raises:
            MediaError: The server refused the token or could not be reached.
        """
        # Never cancel room.connect() itself: cancelled between the SDK's
        # connect callback and its ready-for-events request, the FFI waits
        # for that request, times out and panics (SIGTERM to the process).
        # On timeout or cancellation it finishes in the background and the
        # room is left right after.
        connecting = asyncio.ensure_future(
            self.room.connect(self._url, self._token, rtc.RoomOptions(auto_subscribe=self._listen))
        )
        try:
            try:
                await asyncio.wait_for(asyncio.shield(connecting), self._timeout)
            except (TimeoutError, asyncio.CancelledError):
                _ABANDONED.add(connecting)
                connecting.add_done_callback(self._leave_abandoned)
                raise
        except (rtc.ConnectError, TimeoutError) as exc:
            text = str(exc).lower()
            retryable = isinstance(exc, TimeoutError) or "timeout" in text
            raise MediaError(
                "could not join the room: "
                + ("timed out" if retryable else "the server refused the connection"),
                retryable=retryable,
            ) from exc
        for p in self.room.remote_participants.values():
            for pub in p.track_publications.values():
                track = pub.track
                if isinstance(track, rtc.RemoteAudioTrack) and pub.sid not in self._remote:
                    self._remote[pub.sid] = RemoteAudio(p.identity, track, pub.sid)
        self.emit("connected")
        return self

    def _leave_abandoned(self, connecting: asyncio.Future[None]) -> None:
        _ABANDONED.discard(connecting)
        if not connecting.cancelled() and connecting.exception() is None:
            task = asyncio.ensure_future(self.room.disconnect())
            _ABANDONED.add(task)
            task.add_done_callback(_ABANDONED.discard)

    async def publish_audio(self, source: rtc.AudioSource, *, name: str = "microphone") -> None:
        """Publish ``source`` as this participant's microphone track.

        Raises:
            MediaError: The track could not be published (e.g. no publish grant).
        """
        track = rtc.LocalAudioTrack.create_audio_track(name, source)
        # Muted before publishing, so the publish request itself says so and
        # the server never needs a separate mute message. The SDK sends each
        # mute and unmute from a task of its own, unordered: a mute right
        # after publishing followed at once by an unmute (a standby caller
        # promoted as it publishes) could reach the server in reverse and
        # leave the track muted there for good while the app thinks it is live.
        published_muted = self._muted
        if published_muted:
            track.mute()
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            self._mic_pub = await self.room.local_participant.publish_track(track, opts)
        except Exception as exc:
            raise MediaError("could not publish the microphone track") from exc
        self._mic = track
        self._sent_muted = published_muted
        # Changed while publishing (nothing to apply it to then): one message
        # now, after the publish was answered, so it cannot overtake it.
        self._send_mute()

    def restrict_subscribers(self, identities: Sequence[str] | None) -> None:
        """Let only ``identities`` subscribe to this participant's tracks (server-enforced).

        None lets everyone subscribe again; an empty list, nobody.
        """
        if identities is None:
            self.room.local_participant.set_track_subscription_permissions(
                allow_all_participants=True
            )
            return
        self.room.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(participant_identity=i, allow_all=True)
                for i in identities
            ],
        )

    async def unpublish_audio(self) -> None:
        """Stop publishing the microphone track."""
        pub, self._mic_pub, self._mic = self._mic_pub, None, None
        if pub is not None and self.room.isconnected():
            # Bounded: unpublishing renegotiates, which never ends when the
            # room goes away meanwhile (seen when a transfer room closed).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.room.local_participant.unpublish_track(pub.sid), UNPUBLISH_TIMEOUT_S
                )

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the microphone; a muted track sends no audio.

        The choice is kept for a track published later.
        """
        self._muted = muted
        if self._mic is None or self._mute_timer is not None:
            return  # nothing to apply it to yet, or a deferred change takes the latest
        wait_s = self._mute_sent_at + MUTE_SETTLE_S - time.monotonic()
        if wait_s > 0:
            # The SDK sends each mute and unmute from a task of its own,
            # unordered: two close together can reach the server reversed and
            # leave the track muted there for good. One change per interval.
            with contextlib.suppress(RuntimeError):  # no loop: apply at once
                self._mute_timer = asyncio.get_running_loop().call_later(wait_s, self._send_mute)
                return
        self._send_mute()

    def _send_mute(self) -> None:
        self._mute_timer = None
        if self._mic is None or self._muted == self._sent_muted:
            return
        self._sent_muted = self._muted
        self._mute_sent_at = time.monotonic()
        if self._muted:
            self._mic.mute()
        else:
            self._mic.unmute()

    def each_remote_audio(self, listener: Callable[[RemoteAudio], object]) -> Callable[[], None]:
        """Call ``listener`` for every remote audio track: those present now, then each new one.

        Returns:
            A function that stops the calls for new tracks.
        """
        for audio in list(self._remote.values()):
            listener(audio)
        return self.on("remote_audio", listener)

    async def remote_audio(self) -> AsyncIterator[RemoteAudio]:
        """Yield every remote audio track: those present now, then each new one.

        Ends when the session disconnects.
        """
        q: asyncio.Queue[RemoteAudio] = asyncio.Queue()
        for audio in self._remote.values():
            q.put_nowait(audio)
        self._audio_waiters.append(q)
        try:
            while True:
                audio = await q.get()
                if audio is None:
                    return
                yield audio
        finally:
            self._audio_waiters.remove(q)

    async def wait_for_audio(self, identity: str, timeout_s: float = 10.0) -> RemoteAudio:
        """Return the audio track of ``identity``, waiting until it is subscribed.

        Raises:
            MediaError: It did not arrive in time.
        """

        async def find() -> RemoteAudio:
            async for audio in self.remote_audio():
                if audio.identity == identity:
                    return audio
            raise MediaError("disconnected while waiting for audio")

        try:
            return await asyncio.wait_for(find(), timeout_s)
        except TimeoutError:
            raise MediaError(
                "no audio from the participant in time",
                retryable=True,
                details={"identity": identity},
            ) from None

    async def send_data(
        self,
        payload: bytes | str | Mapping[str, Any],
        *,
        topic: str,
        destination_identities: Sequence[str] = (),
        reliable: bool = True,
    ) -> None:
        """Send a data packet to chosen identities (or everyone) in the room."""
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
        await self.room.local_participant.publish_data(
            data,
            reliable=reliable,
            topic=topic,
            destination_identities=list(destination_identities),
        )

    def register_rpc(
        self, method: str, handler: Callable[[rtc.RpcInvocationData], Awaitable[str]]
    ) -> None:
        """Answer RPC calls to ``method`` with ``handler``."""
        self.room.local_participant.register_rpc_method(method, handler)

    async def perform_rpc(
        self,
        destination: str,
        method: str,
        payload: str | Mapping[str, Any] = "",
        *,
        timeout_s: float = 10.0,
    ) -> str:
        """Call an RPC method on another participant and return its answer.

        Raises:
            MediaError: The call failed or was not answered in time.
        """
        text = payload if isinstance(payload, str) else json.dumps(payload)
        try:
            return await self.room.local_participant.perform_rpc(
                destination_identity=destination,
                method=method,
                payload=text,
                response_timeout=timeout_s,
            )
        except rtc.RpcError as exc:
            raise MediaError(
                f"rpc {method} failed: {exc.message}",
                retryable=exc.code in (1501, 1502),
                details={"identity": destination, "rpc_code": exc.code},
            ) from exc

    async def set_attributes(self, attributes: Mapping[str, str]) -> None:
        """Update our own participant attributes (needs the grant; agents have it)."""
        await self.room.local_participant.set_attributes(dict(attributes))

    async def aclose(self) -> None:
        """Unpublish and leave the room; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._mute_timer is not None:
            self._mute_timer.cancel()
            self._mute_timer = None
        # Unpublishing first makes for the cleanest leave, but it renegotiates,
        # which never ends when the room went away meanwhile: bounded.
        await self.unpublish_audio()
        # The SDK's disconnect waits for the room's event task, which now and
        # then never ends (seen while the engine was resuming a connection).
        # Bounded, so hanging up never hangs the app; a leave that did not
        # finish goes on in the background, and the server drops a silent
        # participant by itself.
        leaving = asyncio.ensure_future(self.room.disconnect())
        try:
            await asyncio.wait_for(asyncio.shield(leaving), DISCONNECT_TIMEOUT_S)
        except TimeoutError:
            log.warning("leaving the room did not finish in time; going on")
            _ABANDONED.add(leaving)
            leaving.add_done_callback(_ABANDONED.discard)
        except Exception:
            log.debug("leaving the room failed", exc_info=True)

    async def __aenter__(self) -> RtcSession:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
