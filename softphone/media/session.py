"""One RTC session: a ``livekit.rtc.Room`` joined with a token.

The session connects, publishes an audio track from a given source, hands
out the audio of each remote participant as it arrives, surfaces connection
changes (reconnecting, reconnected, disconnected with a reason) as typed
events, and disconnects cleanly. An app can hold several at once (the agent's
call leg and consult leg).

A lost connection comes back promptly. The SDK resumes or rejoins by itself,
but between attempts it backs off (up to 7 s, jittered), so after a LiveKit
server restart a call stayed silent for seconds after the server was ready.
While the connection is down the session asks the server's HTTP endpoint
every 100 ms whether it answers; once it does after having been down (or the
SDK gave up) the session joins afresh with a new ``rtc.Room`` and puts back
what it had: the microphone (muted or not, held or not), other published
tracks, who may subscribe, RPC handlers and attributes. Remote audio then
arrives as new tracks (``remote_audio``); listeners of the session, not of
its room, see one session throughout, and ``reconnected`` says how long the
gap was (:class:`Reconnected`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx
from livekit import rtc

from softphone.domain.events import EventEmitter
from softphone.errors import MediaError, ValidationError
from softphone.http_client import async_client

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
# Room joins and leaves the event loop must not stop in the middle of: every
# connect while it runs, and leaves given up on (timed out) that still finish.
_ABANDONED: set[asyncio.Future[None]] = set()
DISCONNECT_TIMEOUT_S = 5.0
UNPUBLISH_TIMEOUT_S = 2.0
# At most one mute change reaches the SDK per this interval (see set_muted).
MUTE_SETTLE_S = 0.1
# Sends the SDK's (blocking) mute requests off the event loop, one at a time.
_MUTE_WORKER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rtc-mute")
# While the connection is down the server is asked this often whether it answers.
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0
# The server answered all along (a network blip, not a restart): the SDK's own
# resume keeps the connection and is quicker than joining afresh; it gets this long.
RESUME_GRACE_S = 2.0
# The old room is given this long to leave before the new one joins.
REJOIN_LEAVE_S = 1.0
# A connection not back after this long is given up: the session disconnects.
RECOVER_BUDGET_S = 120.0
# Disconnect reasons that are an answer, not a failure: never rejoin after them.
FINAL_REASONS = frozenset(
    {"client", "removed", "room_deleted", "duplicate_identity", "room_closed"}
)


@dataclasses.dataclass(frozen=True)
class RemoteAudio:
    """The audio track of one remote participant."""

    identity: str
    track: rtc.RemoteAudioTrack
    sid: str
    name: str = ""

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
class Reconnected:
    """The connection is back after ``gap_s`` seconds.

    ``rejoined`` is True when the session joined afresh (remote audio then
    comes as new tracks, and the room may have been re-created empty by a
    restarted server); False when the SDK resumed the same connection.
    """

    gap_s: float
    rejoined: bool


@dataclasses.dataclass
class _Published:
    """A track this session publishes besides the microphone (put back after a rejoin)."""

    source: rtc.AudioSource
    name: str
    track: rtc.LocalAudioTrack | None = None
    pub: rtc.LocalTrackPublication | None = None


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


def _http_url(url: str) -> str:
    """The HTTP address of a LiveKit server given its WebSocket URL (it answers ``OK`` there)."""
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


RpcHandler = Callable[[rtc.RpcInvocationData], Awaitable[str]]


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
        rejoin: Join afresh when the connection is lost and the SDK does not
            bring it back promptly (see the module docstring). False leaves
            it to the SDK alone.
        token_source: Gives a fresh token for the same identity and room,
            asked when a rejoin is refused with the token in hand (expired).
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        connect_timeout_s: float = 10.0,
        listen: bool = True,
        rejoin: bool = True,
        token_source: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        super().__init__()
        self._url = url
        self._token = token
        self._token_source = token_source
        self._timeout = connect_timeout_s
        self._listen = listen
        self._rejoin = rejoin
        self._room = rtc.Room()
        self._identity = ""
        self._room_name = ""
        self._mic_source: rtc.AudioSource | None = None
        self._mic_name = "microphone"
        self._mic: rtc.LocalAudioTrack | None = None
        self._mic_pub: rtc.LocalTrackPublication | None = None
        self._extra: dict[str, _Published] = {}
        # Who may subscribe (restrict_subscribers), put back after a rejoin.
        self._subscribers: tuple[str, ...] | None = None
        self._rpc: dict[str, RpcHandler] = {}
        self._attributes: dict[str, str] = {}
        self._remote: dict[str, RemoteAudio] = {}
        self._audio_waiters: list[asyncio.Queue[RemoteAudio]] = []
        self._closed = False
        self._muted = False
        # Held: muted whatever set_muted says (the caller is on hold).
        self._held = False
        # What the SDK was last told, when, and a deferred change (set_muted).
        self._sent_muted = False
        self._mute_sent_at = 0.0
        self._mute_timer: asyncio.TimerHandle | None = None
        # When the connection went down (None while it is up) and the task bringing it back.
        self._down_since: float | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.disconnect_reason: str | None = None
        self.rejoins = 0
        self._wire(self._room)

    @property
    def room(self) -> rtc.Room:
        """The SDK room this session is connected with now (a new one after a rejoin)."""
        return self._room

    @property
    def identity(self) -> str:
        """Our own identity in the room."""
        return self._identity or self._room.local_participant.identity

    @property
    def room_name(self) -> str:
        """The name of the room this session joined."""
        return self._room_name or self._room.name

    @property
    def connected(self) -> bool:
        """True while connected (including while reconnecting or rejoining)."""
        if self._closed or self.disconnect_reason is not None:
            return False
        return self._room.isconnected() or self._down_since is not None

    @property
    def recovering(self) -> bool:
        """True while the connection is down and being brought back."""
        return self._down_since is not None

    @property
    def publishing(self) -> bool:
        """Whether a microphone track is published (muted or not)."""
        return self._mic_pub is not None

    @property
    def may_listen(self) -> bool:
        """Whether the server lets this participant subscribe (a standby caller: not yet)."""
        try:
            return bool(self._room.local_participant.permissions.can_subscribe)
        except Exception:  # not connected (rejoining): nothing to hear now
            return False

    @property
    def muted(self) -> bool:
        """Whether the published audio track is muted (by choice or held)."""
        return self._muted or self._held

    @property
    def subscribers(self) -> tuple[str, ...] | None:
        """Who may subscribe to our tracks (None: everyone), as last restricted."""
        return self._subscribers

    @property
    def held(self) -> bool:
        """Whether the microphone is held muted (see :meth:`hold_mic`)."""
        return self._held

    def remote_identities(self) -> list[str]:
        """Identities of the visible remote participants."""
        return list(self._room.remote_participants)

    def remote_tracks(self) -> list[RemoteAudio]:
        """The remote audio tracks subscribed now."""
        return list(self._remote.values())

    def _wire(self, r: rtc.Room) -> None:
        """Route ``r``'s events to this session's; a room replaced by a rejoin is ignored."""

        def current() -> bool:
            return r is self._room

        @r.on("track_subscribed")
        def _sub(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            if current() and isinstance(track, rtc.RemoteAudioTrack):
                self._add_remote(RemoteAudio(p.identity, track, pub.sid, pub.name))

        @r.on("track_unsubscribed")
        def _unsub(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            audio = self._remote.pop(pub.sid, None) if current() else None
            if audio is not None:
                self.emit("remote_audio_ended", audio)

        @r.on("participant_connected")
        def _joined(p: rtc.RemoteParticipant) -> None:
            if current():
                self.emit(
                    "participant_joined",
                    ParticipantChange(p.identity, dict(p.attributes), _kind(p)),
                )

        @r.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            if not current():
                return
            # Its tracks end with it, whether or not the SDK says so first.
            for sid, audio in list(self._remote.items()):
                if audio.identity == p.identity:
                    del self._remote[sid]
                    self.emit("remote_audio_ended", audio)
            self.emit(
                "participant_left", ParticipantChange(p.identity, dict(p.attributes), _kind(p))
            )

        @r.on("participant_attributes_changed")
        def _attrs(changed: dict[str, str], p: rtc.Participant) -> None:
            if current():
                self.emit(
                    "participant_attributes_changed",
                    ParticipantChange(p.identity, dict(p.attributes), _kind(p)),
                )

        @r.on("room_metadata_changed")
        def _meta(old: str, new: str) -> None:
            if current():
                self.emit("room_metadata_changed", new)

        @r.on("data_received")
        def _data(packet: rtc.DataPacket) -> None:
            if current():
                sender = packet.participant.identity if packet.participant else None
                self.emit("data", DataMessage(packet.topic or "", sender, bytes(packet.data)))

        @r.on("reconnecting")
        def _reconnecting() -> None:
            if current():
                self._connection_lost(sdk_gave_up=False)

        @r.on("reconnected")
        def _reconnected() -> None:
            if current():
                self._connection_back(rejoined=False)

        @r.on("participant_permissions_changed")
        def _permissions(p: rtc.Participant, permission: Any) -> None:
            # Our own permissions, changed by the server API (a standby
            # caller promoted): payload is whether we may subscribe now.
            if current() and p.identity == r.local_participant.identity:
                self.emit("may_listen", bool(permission.can_subscribe))

        @r.on("connection_quality_changed")
        def _quality(p: rtc.Participant, q: int) -> None:
            if current() and p.identity == r.local_participant.identity:
                self.emit("connection_quality", int(q))

        @r.on("disconnected")
        def _disconnected(reason: rtc.DisconnectReason.ValueType) -> None:
            if not current():
                return
            why = _REASONS.get(reason, "network")
            if self._rejoin and not self._closed and why not in FINAL_REASONS and self._identity:
                # The SDK gave up (or the server shut down): bring it back ourselves.
                log.info("connection lost; rejoining", extra={"reason": why})
                self._connection_lost(sdk_gave_up=True)
                return
            self._finally_disconnected(why)

    def _add_remote(self, audio: RemoteAudio) -> None:
        if audio.sid in self._remote:
            return
        self._remote[audio.sid] = audio
        for q in self._audio_waiters:
            q.put_nowait(audio)
        self.emit("remote_audio", audio)

    def _finally_disconnected(self, reason: str) -> None:
        if self.disconnect_reason is not None:
            return
        self.disconnect_reason = reason
        self._down_since = None
        self._back.set()
        for q in self._audio_waiters:
            q.put_nowait(None)  # type: ignore[arg-type]
        self.emit("disconnected", Disconnected(reason))

    async def connect(self) -> RtcSession:
        """Join the room.

        Raises:
            MediaError: The server refused the token or could not be reached.
        """
        await self._connect_room(self._room, self._token)
        self._identity = self._room.local_participant.identity
        self._room_name = self._room.name
        if self._subscribers is not None:
            self._apply_subscribers()
        for p in self._room.remote_participants.values():
            for pub in p.track_publications.values():
                track = pub.track
                if isinstance(track, rtc.RemoteAudioTrack) and pub.sid not in self._remote:
                    self._remote[pub.sid] = RemoteAudio(p.identity, track, pub.sid, pub.name)
        self.emit("connected")
        return self

    async def _connect_room(self, room: rtc.Room, token: str) -> None:
        """``room.connect``, bounded; a connect given up on is left once it finishes.

        Raises:
            MediaError: Refused, unreachable or timed out.
        """
        # Never cancel room.connect() itself: cancelled between the SDK's
        # connect callback and its ready-for-events request, the FFI waits
        # for that request, times out and panics (SIGTERM to the process).
        # On timeout or cancellation it finishes in the background and the
        # room is left right after.
        # A loop stopped while a connect runs has the same end (the callback
        # is never handled): every connect is tracked until it finishes, for
        # settle_abandoned() to wait for.
        connecting = asyncio.ensure_future(
            room.connect(self._url, token, rtc.RoomOptions(auto_subscribe=self._listen))
        )
        _ABANDONED.add(connecting)
        connecting.add_done_callback(_ABANDONED.discard)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(connecting), self._timeout)
            except (TimeoutError, asyncio.CancelledError):
                connecting.add_done_callback(functools.partial(_leave_abandoned, room))
                raise
        except (rtc.ConnectError, TimeoutError) as exc:
            text = str(exc).lower()
            retryable = isinstance(exc, TimeoutError) or "timeout" in text
            raise MediaError(
                "could not join the room: "
                + ("timed out" if retryable else "the server refused the connection"),
                retryable=retryable,
            ) from exc

    # ---- losing and regaining the connection ------------------------------------------
    def _connection_lost(self, *, sdk_gave_up: bool) -> None:
        if self._closed or self.disconnect_reason is not None:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._back.clear()
            self.emit("reconnecting")
        if self._rejoin and self._recovery is None:
            self._recovery = self._spawn(self._recover(sdk_gave_up=sdk_gave_up))

    def _connection_back(self, *, rejoined: bool) -> None:
        down, self._down_since = self._down_since, None
        self._back.set()
        if down is None:
            return
        gap_s = time.monotonic() - down
        log.info("connection back", extra={"ms": round(gap_s * 1000), "rejoined": rejoined})
        if not rejoined:
            # A full reconnect by the SDK joins with the token's attributes
            # only and may forget who may subscribe: put both back (both idempotent).
            self._apply_subscribers()
            if self._attributes:
                self._spawn(self._restore_attributes())
        self.emit("reconnected", Reconnected(gap_s, rejoined))

    async def _recover(self, *, sdk_gave_up: bool) -> None:
        """Bring the connection back as soon as the server answers (see the module docstring)."""
        started = time.monotonic()
        server_was_down = sdk_gave_up
        probe = _http_url(self._url)
        try:
            async with async_client(timeout=PROBE_TIMEOUT_S) as http:
                while self._down_since is not None and not self._closed:
                    if time.monotonic() - started > RECOVER_BUDGET_S:
                        log.warning("connection not back in time; giving up")
                        # Said first: leaving the room below must not read as our own choice.
                        self._finally_disconnected("network")
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self._room.disconnect(), REJOIN_LEAVE_S)
                        return
                    if not await _answers(http, probe):
                        server_was_down = True
                        await asyncio.sleep(PROBE_INTERVAL_S)
                        continue
                    if not server_was_down:
                        # The server answered all along: let the SDK resume first.
                        await self._wait_back(RESUME_GRACE_S)
                        server_was_down = True  # not resumed: from now on, rejoin
                        continue
                    if await self._rejoin_once():
                        return
                    await asyncio.sleep(PROBE_INTERVAL_S)
        finally:
            self._recovery = None

    async def _wait_back(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._back.wait(), timeout_s)

    async def _rejoin_once(self) -> bool:
        """Join afresh with a new room and put back what this session had; False if it failed."""
        old, new = self._room, rtc.Room()
        # From now on the old room's events are not ours (its leave below included).
        self._room = new
        self._wire(new)
        # The old room must not come back under our identity after the new
        # one joined (the server would then push the new one out): leave it
        # first, bounded (a leave during the SDK's reconnect can hang).
        leaving = asyncio.ensure_future(old.disconnect())
        try:
            await asyncio.wait_for(asyncio.shield(leaving), REJOIN_LEAVE_S)
        except Exception:
            _ABANDONED.add(leaving)
            leaving.add_done_callback(_ABANDONED.discard)
        for audio in list(self._remote.values()):
            self.emit("remote_audio_ended", audio)
        self._remote.clear()
        self._mic, self._mic_pub = None, None
        for extra in self._extra.values():
            extra.track, extra.pub = None, None
        token = getattr(old, "_token", None) or self._token  # the SDK keeps refreshed tokens
        try:
            try:
                await self._connect_room(new, token)
            except MediaError as exc:
                if exc.retryable or self._token_source is None:
                    raise
                # Refused: the token in hand may have expired during a long call.
                token = await self._token_source()
                new = self._room = rtc.Room()
                self._wire(new)
                await self._connect_room(new, token)
        except MediaError as exc:
            log.info("rejoin failed; trying again", extra={"error": exc.message})
            return False
        except Exception:
            log.warning("rejoin failed; trying again", exc_info=True)
            return False
        self._token = token
        self.rejoins += 1
        await self._restore()
        for p in new.remote_participants.values():
            for pub in p.track_publications.values():
                track = pub.track
                if isinstance(track, rtc.RemoteAudioTrack):
                    self._add_remote(RemoteAudio(p.identity, track, pub.sid, pub.name))
        self._connection_back(rejoined=True)
        return True

    async def _restore(self) -> None:
        """Put back, in a new room, what this session had in the old one."""
        local = self._room.local_participant
        for method, handler in self._rpc.items():
            local.register_rpc_method(method, handler)
        # Who may subscribe first: a track must never be open to everyone for a moment.
        self._apply_subscribers()
        if self._mic_source is not None:
            try:
                await self._publish_mic()
            except MediaError:
                log.warning("could not publish the microphone again after rejoining")
        for extra in self._extra.values():
            try:
                await self._publish_extra(extra)
            except MediaError:
                log.warning("could not publish a track again after rejoining")
        if self._attributes:
            await self._restore_attributes()

    async def _restore_attributes(self) -> None:
        with contextlib.suppress(Exception):
            await self._room.local_participant.set_attributes(dict(self._attributes))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("session task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ---- publishing ---------------------------------------------------------------------
    async def publish_audio(self, source: rtc.AudioSource, *, name: str = "microphone") -> None:
        """Publish ``source`` as this participant's microphone track.

        Raises:
            MediaError: The track could not be published (e.g. no publish grant).
        """
        self._mic_source, self._mic_name = source, name
        try:
            await self._publish_mic()
        except MediaError:
            self._mic_source = None
            raise

    async def _publish_mic(self) -> None:
        assert self._mic_source is not None
        track = rtc.LocalAudioTrack.create_audio_track(self._mic_name, self._mic_source)
        # Muted before publishing, so the publish request itself says so and
        # the server never needs a separate mute message. The SDK sends each
        # mute and unmute from a task of its own, unordered: a mute right
        # after publishing followed at once by an unmute (a standby caller
        # promoted as it publishes) could reach the server in reverse and
        # leave the track muted there for good while the app thinks it is live.
        published_muted = self.muted
        if published_muted:
            track.mute()
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            self._mic_pub = await self._room.local_participant.publish_track(track, opts)
        except Exception as exc:
            raise MediaError("could not publish the microphone track") from exc
        self._mic = track
        self._sent_muted = published_muted
        # Changed while publishing (nothing to apply it to then): one message
        # now, after the publish was answered, so it cannot overtake it.
        self._send_mute()

    async def publish_track(self, source: rtc.AudioSource, *, name: str) -> str:
        """Publish ``source`` as another audio track named ``name`` (e.g. hold audio).

        It is published again after a rejoin, until :meth:`unpublish_track`.
        Who may subscribe is the participant's (:meth:`restrict_subscribers`).

        Returns:
            The publication's id.

        Raises:
            ValidationError: A track of that name is published already.
            MediaError: It could not be published.
        """
        if name in self._extra or (name == self._mic_name and self._mic_source is not None):
            raise ValidationError("name", "a track of that name is published already")
        extra = _Published(source=source, name=name)
        self._extra[name] = extra
        try:
            return await self._publish_extra(extra)
        except MediaError:
            self._extra.pop(name, None)
            raise

    async def _publish_extra(self, extra: _Published) -> str:
        track = rtc.LocalAudioTrack.create_audio_track(extra.name, extra.source)
        # Tokens grant the microphone source only (the token minter): the
        # track is told apart by its name.
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            extra.pub = await self._room.local_participant.publish_track(track, opts)
        except Exception as exc:
            raise MediaError(f"could not publish the {extra.name} track") from exc
        extra.track = track
        return extra.pub.sid

    async def unpublish_track(self, name: str) -> None:
        """Stop publishing the track :meth:`publish_track` published as ``name``."""
        extra = self._extra.pop(name, None)
        if extra is not None and extra.pub is not None:
            await self._unpublish(extra.pub)

    async def _unpublish(self, pub: rtc.LocalTrackPublication) -> None:
        if self._room.isconnected():
            # Bounded: unpublishing renegotiates, which never ends when the
            # room goes away meanwhile (seen when a transfer room closed).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._room.local_participant.unpublish_track(pub.sid), UNPUBLISH_TIMEOUT_S
                )

    def restrict_subscribers(self, identities: Sequence[str] | None) -> None:
        """Let only ``identities`` subscribe to this participant's tracks (server-enforced).

        None lets everyone subscribe again; an empty list, nobody. Kept and
        applied again after a rejoin.
        """
        self._subscribers = None if identities is None else tuple(identities)
        self._apply_subscribers()

    def _apply_subscribers(self) -> None:
        try:
            local = self._room.local_participant
        except Exception:
            return  # not connected now: applied when it is (rejoin)
        if self._subscribers is None:
            local.set_track_subscription_permissions(allow_all_participants=True)
            return
        local.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[
                rtc.ParticipantTrackPermission(participant_identity=i, allow_all=True)
                for i in self._subscribers
            ],
        )

    async def unpublish_audio(self) -> None:
        """Stop publishing the microphone track."""
        pub, self._mic_pub, self._mic, self._mic_source = self._mic_pub, None, None, None
        if pub is not None:
            await self._unpublish(pub)

    # ---- mute ---------------------------------------------------------------------------
    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the microphone; a muted track sends no audio.

        The choice is kept for a track published later. While the mic is
        held (:meth:`hold_mic`) it stays muted whatever is chosen here; the
        choice applies once it is released.
        """
        self._muted = muted
        self._apply_mute()

    def hold_mic(self, held: bool) -> None:
        """Keep the microphone muted, whatever :meth:`set_muted` says, while ``held``.

        For a call on hold: the agent's own mute button must not let the
        agent's voice reach the caller meanwhile. Released, the mic is muted
        or not as last chosen with :meth:`set_muted`.
        """
        self._held = held
        self._apply_mute()

    def _apply_mute(self) -> None:
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
        muted = self.muted
        if self._mic is None or muted == self._sent_muted:
            return
        self._sent_muted = muted
        self._mute_sent_at = time.monotonic()
        # The SDK's mute is a blocking FFI request (46 ms on the loop was seen
        # as a transfer started): one worker thread sends them, in order.
        _MUTE_WORKER.submit(_log_failure, self._mic.mute if muted else self._mic.unmute)

    # ---- remote audio -------------------------------------------------------------------
    def each_remote_audio(self, listener: Callable[[RemoteAudio], object]) -> Callable[[], None]:
        """Call ``listener`` for every remote audio track: those present now, then each new one.

        Tracks after a rejoin are new ones too (the old ones end first).

        Returns:
            A function that stops the calls for new tracks.
        """
        for audio in list(self._remote.values()):
            listener(audio)
        return self.on("remote_audio", listener)

    async def remote_audio(self) -> AsyncIterator[RemoteAudio]:
        """Yield every remote audio track: those present now, then each new one.

        Ends when the session disconnects for good (not while it rejoins).
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

    async def wait_for_audio(
        self, identity: str, timeout_s: float = 10.0, *, name: str | None = None
    ) -> RemoteAudio:
        """Return the audio track of ``identity``, waiting until it is subscribed.

        Args:
            identity: Whose track.
            timeout_s: How long to wait.
            name: Only a track of this name (e.g. ``hold``); None: any.

        Raises:
            MediaError: It did not arrive in time.
        """

        async def find() -> RemoteAudio:
            async for audio in self.remote_audio():
                if audio.identity == identity and (name is None or audio.name == name):
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

    # ---- data, RPC, attributes ----------------------------------------------------------
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
        await self._room.local_participant.publish_data(
            data,
            reliable=reliable,
            topic=topic,
            destination_identities=list(destination_identities),
        )

    def register_rpc(self, method: str, handler: RpcHandler) -> None:
        """Answer RPC calls to ``method`` with ``handler`` (in this room and after a rejoin)."""
        self._rpc[method] = handler
        try:
            local = self._room.local_participant
        except Exception:
            return  # rejoining: registered once the new room is connected
        local.register_rpc_method(method, handler)

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
            return await self._room.local_participant.perform_rpc(
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
        """Update our own participant attributes (needs the grant; agents have it).

        Kept and set again after a rejoin.
        """
        self._attributes.update(attributes)
        if self._down_since is None:  # else set once the connection is back
            await self._room.local_participant.set_attributes(dict(attributes))

    # ---- leaving ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Unpublish and leave the room; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._down_since = None
        if self._mute_timer is not None:
            self._mute_timer.cancel()
            self._mute_timer = None
        # A rejoin cancelled mid-join leaves its room once that join finishes
        # (see _connect_room).
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for extra in list(self._extra.values()):
            if extra.pub is not None:
                await self._unpublish(extra.pub)
        self._extra.clear()
        # Unpublishing first makes for the cleanest leave, but it renegotiates,
        # which never ends when the room went away meanwhile: bounded.
        await self.unpublish_audio()
        # The SDK's disconnect waits for the room's event task, which now and
        # then never ends (seen while the engine was resuming a connection).
        # Bounded, so hanging up never hangs the app; a leave that did not
        # finish goes on in the background, and the server drops a silent
        # participant by itself.
        leaving = asyncio.ensure_future(self._room.disconnect())
        try:
            await asyncio.wait_for(asyncio.shield(leaving), DISCONNECT_TIMEOUT_S)
        except TimeoutError:
            log.warning("leaving the room did not finish in time; going on")
            _ABANDONED.add(leaving)
            leaving.add_done_callback(_ABANDONED.discard)
        except Exception:
            log.debug("leaving the room failed", exc_info=True)
        # A room never connected (closed while rejoining) says nothing itself.
        self._finally_disconnected("client")

    async def __aenter__(self) -> RtcSession:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _answers(http: httpx.AsyncClient, url: str) -> bool:
    """Whether the LiveKit server at ``url`` answers its HTTP endpoint."""
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def settle_abandoned(timeout_s: float = 20.0) -> None:
    """Wait (bounded) for the room joins still running and the leaves given up on.

    Call it before the event loop stops: a room connect the loop never
    finishes makes the SDK's FFI time out (15 s) waiting for the room's
    ready-for-events request and panic, which ends the whole process
    (SIGTERM to itself). The bound is above a connect's own timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending := [f for f in _ABANDONED if not f.done() and f.get_loop() is loop]:
        left = deadline - loop.time()
        if left <= 0:
            log.warning("%d room joins or leaves still running at shutdown", len(pending))
            return
        await asyncio.wait(pending, timeout=left)
        await asyncio.sleep(0)  # their done callbacks may start the leaves


def _log_failure(request: Callable[[], None]) -> None:
    try:
        request()
    except Exception:
        log.warning("the SDK refused a mute change", exc_info=True)


def _leave_abandoned(room: rtc.Room, connecting: asyncio.Future[None]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        task = asyncio.ensure_future(room.disconnect())
        _ABANDONED.add(task)
        task.add_done_callback(_ABANDONED.discard)
