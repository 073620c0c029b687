"""The LiveKit server API as the softphone uses it: rooms, participants, data, RPC.

A thin, typed facade over ``livekit.api``: names are validated before any
request goes out, results come back as small frozen dataclasses, and every
failure is a :class:`~softphone.errors.LiveKitError` (``NotFoundError`` for a
missing room or participant) raised ``from`` the SDK's error, with
``retryable`` set for transport errors and 5xx answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from livekit import api
from livekit.protocol import models
from livekit.protocol import room as proto_room

from softphone.config import Secret
from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.errors import LiveKitError, NotFoundError, ValidationError

T = TypeVar("T")
MAX_METADATA_BYTES = 64 * 1024
MAX_DATA_BYTES = 15 * 1024


@dataclasses.dataclass(frozen=True)
class RoomInfo:
    """A room as the server reports it."""

    name: str
    sid: str
    metadata: str
    num_participants: int
    created_at: float
    empty_timeout_s: int
    departure_timeout_s: int


@dataclasses.dataclass(frozen=True)
class ParticipantInfo:
    """A participant as the server reports it."""

    identity: str
    sid: str
    name: str
    kind: str
    attributes: Mapping[str, str]
    joined_at: float
    audio_tracks: int
    # Audio tracks not muted: what the participant is sending now.
    unmuted_audio_tracks: int
    hidden: bool


def _room(r: Any) -> RoomInfo:
    return RoomInfo(
        name=r.name,
        sid=r.sid,
        metadata=r.metadata,
        num_participants=r.num_participants,
        created_at=float(r.creation_time),
        empty_timeout_s=r.empty_timeout,
        departure_timeout_s=r.departure_timeout,
    )


def _kind_name(kind: int) -> str:
    names = {0: "standard", 1: "ingress", 2: "egress", 3: "sip", 4: "agent"}
    return names.get(kind, "other")


def _participant(p: Any) -> ParticipantInfo:
    return ParticipantInfo(
        identity=p.identity,
        sid=p.sid,
        name=p.name,
        kind=_kind_name(p.kind),
        attributes=dict(p.attributes),
        joined_at=float(p.joined_at),
        audio_tracks=sum(1 for t in p.tracks if t.type == api.TrackType.AUDIO),
        unmuted_audio_tracks=sum(
            1 for t in p.tracks if t.type == api.TrackType.AUDIO and not t.muted
        ),
        hidden=bool(p.permission.hidden),
    )


class RoomAdmin:
    """Admin access to one LiveKit server's rooms and participants.

    Use as ``async with RoomAdmin(url=..., api_key=..., api_secret=...) as rooms:``.

    Args:
        url: The server URL (``ws(s)://`` or ``http(s)://``).
        api_key: LiveKit API key.
        api_secret: LiveKit API secret.
        timeout_s: Timeout of each request.
    """

    def __init__(
        self, *, url: str, api_key: str, api_secret: Secret, timeout_s: float = 10.0
    ) -> None:
        # No cap on connections: server-side RPCs hold theirs until the
        # participant answers (offers ring for up to the offer timeout), and
        # with aiohttp's default 100 per session, 25 concurrent transfers
        # queued every other request behind them until it timed out.
        # (With a session of ours, LiveKitAPI ignores its timeout argument.)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        self._api = api.LiveKitAPI(
            url, api_key, api_secret.get(), session=self._session, failover=False
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._api.aclose()
        await self._session.close()

    async def __aenter__(self) -> RoomAdmin:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, what: str, awaitable: Awaitable[T], **details: Any) -> T:
        try:
            return await awaitable
        except api.TwirpError as exc:
            if exc.code == "not_found" or exc.status == 404:
                raise NotFoundError(f"{what}: not found", details=details) from exc
            raise LiveKitError(
                f"{what} failed: {exc.code} ({exc.status})",
                retryable=exc.status >= 500 or exc.status in (408, 429),
                details=details,
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise LiveKitError(
                f"{what}: LiveKit server unreachable ({exc.__class__.__name__})",
                retryable=True,
                details=details,
            ) from exc

    async def create_room(
        self,
        name: str,
        *,
        empty_timeout_s: int = 300,
        departure_timeout_s: int = 20,
        metadata: str = "",
        max_participants: int = 0,
    ) -> RoomInfo:
        """Create a room (or return it if it exists).

        Args:
            name: Room name.
            empty_timeout_s: Seconds an empty room (never joined) is kept.
            departure_timeout_s: Seconds a room is kept after the last participant left.
            metadata: Initial room metadata (at most 64 KiB).
            max_participants: Limit (0: none).
        """
        validate_room_name(name)
        _check_metadata(metadata)
        if empty_timeout_s < 0 or departure_timeout_s < 0 or max_participants < 0:
            raise ValidationError("timeouts", "must not be negative")
        req = proto_room.CreateRoomRequest(
            name=name,
            empty_timeout=empty_timeout_s,
            departure_timeout=departure_timeout_s,
            metadata=metadata,
            max_participants=max_participants,
        )
        return _room(await self._call("create room", self._api.room.create_room(req), room=name))

    async def list_rooms(self, names: Sequence[str] = ()) -> list[RoomInfo]:
        """List active rooms, all or those named."""
        for n in names:
            validate_room_name(n)
        res = await self._call(
            "list rooms", self._api.room.list_rooms(proto_room.ListRoomsRequest(names=list(names)))
        )
        return [_room(r) for r in res.rooms]

    async def get_room(self, name: str) -> RoomInfo:
        """Return one room.

        Raises:
            NotFoundError: No such room is active.
        """
        rooms = await self.list_rooms([name])
        if not rooms:
            raise NotFoundError("room not found", details={"room": name})
        return rooms[0]

    async def delete_room(self, name: str) -> None:
        """Delete a room, disconnecting everyone in it. Deleting a missing room is a no-op."""
        validate_room_name(name)
        try:
            await self._call(
                "delete room",
                self._api.room.delete_room(proto_room.DeleteRoomRequest(room=name)),
                room=name,
            )
        except NotFoundError:
            return

    async def update_room_metadata(self, name: str, metadata: str) -> RoomInfo:
        """Replace a room's metadata; connected clients get ``room_metadata_changed``."""
        validate_room_name(name)
        _check_metadata(metadata)
        req = proto_room.UpdateRoomMetadataRequest(room=name, metadata=metadata)
        return _room(
            await self._call(
                "update room metadata", self._api.room.update_room_metadata(req), room=name
            )
        )

    async def list_participants(self, room: str) -> list[ParticipantInfo]:
        """List the participants of a room (hidden ones included)."""
        validate_room_name(room)
        res = await self._call(
            "list participants",
            self._api.room.list_participants(proto_room.ListParticipantsRequest(room=room)),
            room=room,
        )
        return [_participant(p) for p in res.participants]

    async def get_participant(self, room: str, identity: str) -> ParticipantInfo:
        """Return one participant.

        Raises:
            NotFoundError: The participant is not in the room.
        """
        validate_room_name(room)
        validate_identity(identity)
        req = proto_room.RoomParticipantIdentity(room=room, identity=identity)
        return _participant(
            await self._call(
                "get participant", self._api.room.get_participant(req), room=room, identity=identity
            )
        )

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect a participant from a room.

        Raises:
            NotFoundError: The participant is not in the room.
        """
        validate_room_name(room)
        validate_identity(identity)
        req = proto_room.RoomParticipantIdentity(room=room, identity=identity)
        await self._call(
            "remove participant",
            self._api.room.remove_participant(req),
            room=room,
            identity=identity,
        )

    async def update_participant(
        self,
        room: str,
        identity: str,
        *,
        attributes: Mapping[str, str] | None = None,
        metadata: str | None = None,
    ) -> ParticipantInfo:
        """Update a participant's attributes (merged) and/or metadata."""
        validate_room_name(room)
        validate_identity(identity)
        if metadata is not None:
            _check_metadata(metadata)
        attrs = dict(attributes or {})
        for k, v in attrs.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise ValidationError("attributes", "keys and values must be text, keys non-empty")
        req = proto_room.UpdateParticipantRequest(
            room=room,
            identity=identity,
            attributes=attrs,
            metadata=metadata or "",
        )
        return _participant(
            await self._call(
                "update participant",
                self._api.room.update_participant(req),
                room=room,
                identity=identity,
            )
        )

    async def set_permission(
        self, room: str, identity: str, permission: models.ParticipantPermission
    ) -> ParticipantInfo:
        """Replace a participant's in-room permission (takes effect at once)."""
        validate_room_name(room)
        validate_identity(identity)
        req = proto_room.UpdateParticipantRequest(
            room=room, identity=identity, permission=permission
        )
        return _participant(
            await self._call(
                "update permission",
                self._api.room.update_participant(req),
                room=room,
                identity=identity,
            )
        )

    async def send_data(
        self,
        room: str,
        payload: bytes | str | Mapping[str, Any],
        *,
        topic: str,
        destination_identities: Sequence[str] = (),
        reliable: bool = True,
    ) -> None:
        """Send a data packet to chosen identities (or everyone) in a room.

        Args:
            room: The room.
            payload: Bytes, text, or a mapping sent as JSON.
            topic: The data topic receivers filter on.
            destination_identities: Receivers; empty means everyone.
            reliable: Reliable (ordered, retransmitted) or lossy delivery.
        """
        validate_room_name(room)
        for ident in destination_identities:
            validate_identity(ident, "destination_identities")
        if not topic:
            raise ValidationError("topic", "must not be empty")
        data = _encode(payload)
        if len(data) > MAX_DATA_BYTES:
            raise ValidationError("payload", f"must be at most {MAX_DATA_BYTES} bytes")
        kind = api.DataPacket.Kind.RELIABLE if reliable else api.DataPacket.Kind.LOSSY
        req = proto_room.SendDataRequest(
            room=room,
            data=data,
            kind=kind,
            topic=topic,
            destination_identities=list(destination_identities),
        )
        await self._call("send data", self._api.room.send_data(req), room=room, topic=topic)

    async def perform_rpc(
        self,
        room: str,
        destination_identity: str,
        method: str,
        payload: str | Mapping[str, Any] = "",
        *,
        response_timeout_s: float = 10.0,
    ) -> str:
        """Call an RPC method a participant registered, from the server side.

        Returns:
            The participant's response payload.

        Raises:
            LiveKitError: The participant returned an error or did not answer.
        """
        validate_room_name(room)
        validate_identity(destination_identity, "destination_identity")
        if not method:
            raise ValidationError("method", "must not be empty")
        text = payload if isinstance(payload, str) else json.dumps(payload)
        req = proto_room.PerformRpcRequest(
            room=room,
            destination_identity=destination_identity,
            method=method,
            payload=text,
            response_timeout_ms=int(response_timeout_s * 1000),
        )
        client = self._api.room._client
        headers = self._api.room._auth_header(api.VideoGrants(room_admin=True, room=room))
        res = await self._call(
            f"rpc {method}",
            client.request(
                "RoomService",
                "PerformRpc",
                req,
                headers,
                proto_room.PerformRpcResponse,
                timeout=aiohttp.ClientTimeout(total=response_timeout_s + 5),
            ),
            room=room,
            identity=destination_identity,
        )
        return str(res.payload)


def _encode(payload: bytes | str | Mapping[str, Any]) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def _check_metadata(metadata: str) -> None:
    if len(metadata.encode()) > MAX_METADATA_BYTES:
        raise ValidationError("metadata", f"must be at most {MAX_METADATA_BYTES} bytes")
