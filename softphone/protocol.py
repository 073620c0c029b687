"""The one interface the app uses for transfers, tokens, rooms and the agent directory.

Two implementations:

- :class:`softphone.server.transfer_orchestrator.TransferOrchestrator`
  (embedded): runs the protocol in-process with the LiveKit API key/secret.
- :class:`softphone.client.remote_service.RemoteTransferService` (remote): the same
  operations over HTTP to ``softphone.backend``; the workstation holds no
  LiveKit secret.

Every change of a transfer is emitted as ``transfer_changed`` with a
:class:`~softphone.domain.transfer.TransferSnapshot`. Besides, the service sends
each snapshot as a data message on :data:`STATUS_TOPIC` to A in the call room,
so A's app (:class:`softphone.client.agent_call.AgentCall`) follows
the transfer the same way in both modes.

RPC methods and data topics used between the service and the apps:

- ``transfer.offer`` (service -> B in the lobby): JSON offer; B answers ``ringing``.
- ``transfer.withdraw`` (service -> B in the lobby): the offer is gone (caller
  hung up, A cancelled, no answer).
- ``transfer.move`` (service -> caller in R1): join R2 with the given token,
  publish the mic there, then leave R1; answered once moved.
- ``transfer.join`` (service -> B in R2): the caller could not move; join R1
  with the given token and leave R2 (bring-the-agent fall-back).
- data topic ``transfer.summary`` in R2 and room metadata of R2: the summary.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from softphone.domain.events import EventEmitter
from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode, TransferSnapshot, validate_mode
from softphone.errors import ValidationError

TransferServiceEvent = Literal["transfer_changed"]
Presence = Literal["available", "busy", "away"]
PRESENCES: tuple[Presence, ...] = ("available", "busy", "away")
TokenRoleName = Literal["caller", "agent", "supervisor"]
SupervisorMode = Literal["listen", "whisper", "barge"]
RPC_CALL_ASSIGNED = "call.assigned"

RPC_OFFER = "transfer.offer"
RPC_WITHDRAW = "transfer.withdraw"
RPC_MOVE = "transfer.move"
RPC_STANDBY = "transfer.standby"
# In a standby command's body (beside the token grant): the identities that
# may subscribe to the caller's muted mic while it waits (the agent taking
# the call), so nothing is negotiated when it goes live.
STANDBY_ADMIT = "admit"
RPC_JOIN = "transfer.join"
STATUS_TOPIC = "transfer.status"
SUMMARY_TOPIC = "transfer.summary"
PRESENCE_ATTRIBUTE = "presence"

# ---- signed commands ---------------------------------------------------------
# Every RPC payload and data message above comes from the service, signed with
# its Ed25519 key (softphone.server.command_signer): the apps check it with
# verify_command. The wire payload is ``{"cmd": "<JSON text>", "sig": "<b64url>"}``
# where the text holds ``{method, to, room, exp, nonce, body}`` and the
# signature covers its UTF-8 bytes. ``to`` is one identity, or
# COMMAND_TO_ROOM for a room-wide data message (the summary topic).
COMMAND_TO_ROOM = "*"
# Leeway for a workstation clock behind or ahead of the service's.
COMMAND_CLOCK_SKEW_S = 30.0


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url (as keys and signatures travel).

    Raises:
        ValidationError: Not base64url.
    """
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError("payload", "not base64url") from exc


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify_command(
    payload: str | bytes, *, public_key_b64: str, method: str, me: str, room: str, now: float
) -> dict[str, Any]:
    """Check a signed command from the service and return its body.

    Args:
        payload: The RPC payload or data message as received.
        public_key_b64: The service's command key (:class:`ServiceInfo`).
        method: The RPC method or data topic it arrived as.
        me: This participant's identity.
        room: The room it arrived in.
        now: Seconds since the epoch.

    Raises:
        ValidationError: Not JSON, a bad signature, or signed for another
            method, recipient or room, or expired.
    """
    try:
        outer = json.loads(payload)
        text, sig = outer["cmd"], outer["sig"]
        if not isinstance(text, str) or not isinstance(sig, str):
            raise TypeError("cmd and sig must be text")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValidationError("payload", "not a signed command") from exc
    try:
        key = Ed25519PublicKey.from_public_bytes(b64url_decode(public_key_b64))
        key.verify(b64url_decode(sig), text.encode())
    except (InvalidSignature, ValueError) as exc:
        raise ValidationError("payload", "bad signature") from exc
    try:
        cmd = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError("payload", "not a command") from exc
    if not isinstance(cmd, dict) or not isinstance(cmd.get("body"), dict):
        raise ValidationError("payload", "not a command")
    if cmd.get("method") != method:
        raise ValidationError("payload", "signed for another method")
    if cmd.get("to") not in (me, COMMAND_TO_ROOM):
        raise ValidationError("payload", "signed for another recipient")
    if cmd.get("room") != room:
        raise ValidationError("payload", "signed for another room")
    exp = cmd.get("exp")
    if not isinstance(exp, (int, float)) or now > exp + COMMAND_CLOCK_SKEW_S:
        raise ValidationError("payload", "expired")
    body: dict[str, Any] = cmd["body"]
    return body


@dataclasses.dataclass(frozen=True)
class TransferRequest:
    """What A asks for when starting a transfer.

    Attributes:
        caller: The caller's identity in the call room.
        from_agent: Agent A (who is asking).
        to_agent: Agent B.
        call_room: R1.
        mode: warm, warm_intro, direct or cold.
        transcript: The call's transcript so far, from A's app.
        summary: A summary A already has (or edited); skips the summarizer.
    """

    caller: str
    from_agent: str
    to_agent: str
    call_room: str
    mode: Mode = "warm"
    transcript: tuple[TranscriptSegment, ...] = ()
    summary: SummaryCard | None = None

    def validate(self) -> TransferRequest:
        """Check every field; returns self.

        Raises:
            ValidationError: A field is bad (names it).
        """
        validate_identity(self.caller, "caller")
        validate_identity(self.from_agent, "from_agent")
        validate_identity(self.to_agent, "to_agent")
        validate_room_name(self.call_room, "call_room")
        validate_mode(self.mode)
        if self.from_agent == self.to_agent:
            raise ValidationError("to_agent", "cannot transfer a call to oneself")
        if self.caller in (self.from_agent, self.to_agent):
            raise ValidationError("caller", "must not be one of the agents")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the HTTP request body)."""
        return {
            "caller": self.caller,
            "from_agent": self.from_agent,
            "to_agent": self.to_agent,
            "call_room": self.call_room,
            "mode": self.mode,
            "transcript": [s.to_dict() for s in self.transcript],
            "summary": self.summary.to_dict() if self.summary else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferRequest:
        """Build and validate from untrusted JSON.

        Raises:
            ValidationError: A field is missing or bad.
        """
        if not isinstance(data, Mapping):
            raise ValidationError("body", "must be a JSON object")
        for key in ("caller", "from_agent", "to_agent", "call_room"):
            if key not in data:
                raise ValidationError(key, "is required")
        segs = data.get("transcript") or []
        if not isinstance(segs, list) or not all(isinstance(s, Mapping) for s in segs):
            raise ValidationError("transcript", "must be a list of segments")
        try:
            transcript = tuple(TranscriptSegment.from_dict(s) for s in segs)
        except TypeError as exc:
            raise ValidationError("transcript", "a segment is malformed") from exc
        summary = data.get("summary")
        return cls(
            caller=data["caller"],
            from_agent=data["from_agent"],
            to_agent=data["to_agent"],
            call_room=data["call_room"],
            mode=validate_mode(data.get("mode", "warm")),
            transcript=transcript,
            summary=SummaryCard.from_dict(summary) if summary else None,
        ).validate()


@dataclasses.dataclass(frozen=True)
class TokenGrant:
    """A token for one identity in one room, with where to use it.

    Attributes:
        token: The JWT (a secret: never log it).
        identity: Who it is for.
        room: The one room it joins.
        url: The LiveKit URL to connect to.
        expires_at: Seconds since the epoch.
    """

    token: str = dataclasses.field(repr=False)
    identity: str
    room: str
    url: str
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenGrant:
        """Build from :meth:`to_dict` output."""
        return cls(
            token=str(data["token"]),
            identity=str(data["identity"]),
            room=str(data["room"]),
            url=str(data["url"]),
            expires_at=float(data["expires_at"]),
        )


@dataclasses.dataclass(frozen=True)
class TransferTicket:
    """What starting a transfer returns to A.

    Attributes:
        transfer: The transfer as it stands (normally ``offering``).
        consult_token: A's token for R2 (the consult leg); None in modes without one.
    """

    transfer: TransferSnapshot
    consult_token: TokenGrant | None

    @property
    def transfer_id(self) -> str:
        """The transfer's id."""
        return self.transfer.transfer_id

    @property
    def new_room(self) -> str:
        """R2."""
        return self.transfer.new_room

    @property
    def summary(self) -> SummaryCard | None:
        """The summary B was sent."""
        return self.transfer.summary

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the seed route's answer: new room, tokens, summary)."""
        return {
            "transfer": self.transfer.to_dict(),
            "new_room": self.new_room,
            "summary": self.summary.to_dict() if self.summary else None,
            "consult_token": self.consult_token.to_dict() if self.consult_token else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferTicket:
        """Build from :meth:`to_dict` output."""
        tok = data.get("consult_token")
        return cls(
            transfer=TransferSnapshot.from_dict(data["transfer"]),
            consult_token=TokenGrant.from_dict(tok) if tok else None,
        )


@dataclasses.dataclass(frozen=True)
class AgentEntry:
    """An online agent in the directory (the lobby)."""

    identity: str
    name: str
    presence: Presence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RoomEntry:
    """An active room."""

    name: str
    num_participants: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CallInfo:
    """A call as the service's registry knows it.

    Attributes:
        call_id: Server-generated id.
        room: The call room (unguessable; changes when the caller is moved).
        caller: The caller's identity.
        agent: The agent the call is assigned to (B after a transfer).
        consult_rooms: Transfer rooms of this call that are open now.
        created_at: Seconds since the epoch.
        ended_at: When it ended (None while active).
    """

    call_id: str
    room: str
    caller: str
    agent: str
    consult_rooms: tuple[str, ...] = ()
    created_at: float = 0.0
    ended_at: float | None = None

    @property
    def active(self) -> bool:
        """Whether the call is still going."""
        return self.ended_at is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["consult_rooms"] = list(self.consult_rooms)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallInfo:
        """Build from :meth:`to_dict` output."""
        ended = data.get("ended_at")
        return cls(
            call_id=str(data["call_id"]),
            room=str(data["room"]),
            caller=str(data["caller"]),
            agent=str(data["agent"]),
            consult_rooms=tuple(str(r) for r in data.get("consult_rooms") or ()),
            created_at=float(data.get("created_at") or 0.0),
            ended_at=None if ended is None else float(ended),
        )


@dataclasses.dataclass(frozen=True)
class CallTicket:
    """What creating a call returns: the call and the requester's token for its room."""

    call: CallInfo
    token: TokenGrant

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"call": self.call.to_dict(), "token": self.token.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallTicket:
        """Build from :meth:`to_dict` output."""
        return cls(call=CallInfo.from_dict(data["call"]), token=TokenGrant.from_dict(data["token"]))


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    """What an app needs to trust the service's commands.

    Attributes:
        livekit_url: The deployment's own LiveKit URL: a move or join
            instruction naming any other URL is refused.
        command_key: The public half of the key the service signs commands
            with (base64url, Ed25519).
        lobby_room: The agents' lobby.
    """

    livekit_url: str
    command_key: str
    lobby_room: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceInfo:
        """Build from :meth:`to_dict` output."""
        return cls(
            livekit_url=str(data["livekit_url"]),
            command_key=str(data["command_key"]),
            lobby_room=str(data["lobby_room"]),
        )


class TransferService(EventEmitter[TransferServiceEvent], abc.ABC):
    """Warm transfers, tokens, rooms and the agent directory, embedded or remote.

    Every method validates its input first and raises
    :class:`~softphone.errors.ValidationError` for bad input,
    :class:`~softphone.errors.NotFoundError` for an unknown room, identity or
    transfer, :class:`~softphone.errors.TransferError` for a step refused by
    the protocol (conflict). The remote implementation raises
    :class:`~softphone.errors.BackendError` carrying the same code and message.
    """

    @abc.abstractmethod
    async def start_transfer(self, request: TransferRequest) -> TransferTicket:
        """Prepare R2 and the summary, put the caller on hold, and offer the call to B.

        Returns once the offer is out (phase ``offering``), or earlier if the
        transfer already ended (e.g. the caller hung up while preparing).
        """

    @abc.abstractmethod
    async def accept(self, transfer_id: str, *, agent: str) -> TokenGrant:
        """B accepts the offer; returns B's token for R2 (B joins it next)."""

    @abc.abstractmethod
    async def decline(self, transfer_id: str, *, agent: str, reason: str = "") -> TransferSnapshot:
        """B declines; the caller goes back to A with reason ``declined`` and B's text."""

    @abc.abstractmethod
    async def complete(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """A hands over: the caller moves to R2 (or B comes to R1) and A leaves.

        In ``warm_intro`` the first call moves the caller while A stays in R2;
        a second call, when A is done introducing B, removes A.
        """

    @abc.abstractmethod
    async def cancel(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """A cancels; the caller goes back to A with reason ``cancelled``."""

    @abc.abstractmethod
    async def status(self, transfer_id: str) -> TransferSnapshot:
        """The transfer as it stands, with its timeline."""

    @abc.abstractmethod
    async def wait_for_change(
        self, transfer_id: str, *, after_version: int, timeout_s: float = 10.0
    ) -> TransferSnapshot:
        """Return the transfer once its version exceeds ``after_version`` (or at timeout)."""

    @abc.abstractmethod
    async def list_agents(self) -> list[AgentEntry]:
        """Online agents in the lobby with their presence."""

    @abc.abstractmethod
    async def list_rooms(self) -> list[RoomEntry]:
        """Active rooms."""

    @abc.abstractmethod
    async def mint_token(
        self,
        *,
        identity: str,
        room: str,
        role: TokenRoleName,
        supervisor_mode: SupervisorMode = "listen",
    ) -> TokenGrant:
        """A fresh token for a party of ``room`` (to join, re-join, or because one expired).

        Only parties get tokens: a caller for its own call room (and the room
        it is moved to), an agent for the lobby, the calls it is assigned and
        the consult rooms of its transfers, a supervisor for active calls.

        Raises:
            NotFoundError: ``identity`` is no party of ``room`` in that role, or
                the room does not exist (the same answer either way).
        """

    @abc.abstractmethod
    async def create_call(self, *, caller: str, agent: str, requester: str) -> CallTicket:
        """Register a new call of ``caller`` taken by ``agent``; its room is unguessable.

        Returns the call and ``requester``'s token for its room (the caller's
        or the agent's). The agent is told by a ``call.assigned`` command in
        the lobby when it is there.

        Raises:
            ValidationError: Bad identities, or caller and agent the same.
            TransferError: The caller already has an active call.
        """

    @abc.abstractmethod
    async def list_calls(self, *, identity: str, role: TokenRoleName) -> list[CallInfo]:
        """Active calls ``identity`` may see: its own; every call for a supervisor."""

    @abc.abstractmethod
    async def end_call(self, call_id: str, *, identity: str) -> CallInfo:
        """A party hangs up for everyone: the call ends and its rooms close.

        Raises:
            NotFoundError: No such call, or ``identity`` is no party of it.
        """

    @abc.abstractmethod
    async def service_info(self) -> ServiceInfo:
        """The LiveKit URL and command key the apps trust."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop background work and release connections."""

    async def wait_for_phase(
        self, transfer_id: str, phases: Sequence[str], *, timeout_s: float = 15.0
    ) -> TransferSnapshot:
        """Long-poll until the transfer is in one of ``phases``.

        Raises:
            TimeoutError: It did not get there within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        snap = await self.status(transfer_id)
        while snap.phase not in phases:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f" ({snap.reason.code})" if snap.reason is not None else ""
                raise TimeoutError(f"transfer stayed in {snap.phase}{why}")
            snap = await self.wait_for_change(
                transfer_id, after_version=snap.version, timeout_s=min(left, 5.0)
            )
            await asyncio.sleep(0)
        return snap

    async def __aenter__(self) -> TransferService:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
