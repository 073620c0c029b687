"""The HTTP API's bodies: a pydantic model for every request and response.

Shared by both ends: the backend (:mod:`softphone.backend.app`) declares
them on its routes, so FastAPI validates requests and documents every body
in the OpenAPI schema; the client
(:class:`softphone.client.remote_service.RemoteTransferService`) builds its
requests and parses the answers with the same models. Each model converts
to and from the protocol's value objects (``to_domain`` / ``from_domain``),
so nothing past the edge sees raw JSON.

Request models are strict (no coercion: ``"text": 5`` is refused, not turned
into ``"5"``) and forbid unknown fields; names go through
:mod:`softphone.domain.identifiers`; numbers are finite; lists and texts are
bounded. Response models ignore fields they do not know, so an older client
keeps working against a newer backend.

Imports only the protocol, the domain and the errors: no server code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from softphone.domain.identifiers import MAX_NAME_LENGTH, validate_identity, validate_room_name
from softphone.domain.summary import Sentiment, SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode, Phase, ReasonCode, Strategy, TransferSnapshot
from softphone.errors import ValidationError
from softphone.protocol import (
    AgentEntry,
    CallInfo,
    CallTicket,
    Presence,
    RoomEntry,
    ServiceInfo,
    SupervisorMode,
    TokenGrant,
    TokenRoleName,
    TransferRequest,
    TransferTicket,
)

# Bounds of request bodies (the backend enforces the first three before parsing).
MAX_BODY_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32
MAX_NUMBER_DIGITS = 100
MAX_SEGMENTS = 2000
MAX_TEXT = 4000
MAX_REASON = 1000
MAX_LIST_ITEMS = 100
MAX_ITEM = 1000
MAX_ID = 128

# For the OpenAPI schema only (validation goes through softphone.domain.identifiers).
IDENTITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+:-]*$"
ROOM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Server-generated ids (transfers, calls) in paths.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
# C0 controls but tab, newline and carriage return; DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _domain_check(check: Callable[[object, str], str], field: str) -> Callable[[str], str]:
    def run(value: str) -> str:
        try:
            return check(value, field)
        except ValidationError as exc:
            # The domain's message without its "field: " prefix (pydantic adds the location).
            raise PydanticCustomError(
                "invalid_name", exc.message.removeprefix(f"{field}: ")
            ) from None

    return run


def _no_controls(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def run(value: str) -> str:
        if pattern.search(value):
            raise PydanticCustomError("control_character", "must not contain control characters")
        return value

    return run


Identity = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra={"pattern": IDENTITY_PATTERN},
    ),
    AfterValidator(_domain_check(validate_identity, "identity")),
]
"""A participant identity (see :func:`softphone.domain.identifiers.validate_identity`)."""

RoomName = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra={"pattern": ROOM_PATTERN},
    ),
    AfterValidator(_domain_check(validate_room_name, "room")),
]
"""A room name (see :func:`softphone.domain.identifiers.validate_room_name`)."""

Text = Annotated[
    str, Field(strict=True, max_length=MAX_TEXT), AfterValidator(_no_controls(_CONTROL))
]
"""Free text (newlines and tabs allowed, other control characters not)."""

Label = Annotated[
    str,
    Field(strict=True, min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_no_controls(_LINE_CONTROL)),
]
"""A one-line label (a transcript speaker)."""

Item = Annotated[
    str, Field(strict=True, max_length=MAX_ITEM), AfterValidator(_no_controls(_CONTROL))
]
Seconds = Annotated[float, Field(strict=True, ge=0.0, le=1e9, allow_inf_nan=False)]


def validation_message(exc: pydantic.ValidationError | Any) -> str:
    """``"<field>: <message>"`` for the first error of a pydantic (or FastAPI) validation error.

    The location drops FastAPI's ``body`` / ``query`` / ``path`` prefix, so the
    backend's answer and the client's own check read the same.
    """
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}"


class RequestBody(BaseModel):
    """Base of request bodies: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ResponseBody(BaseModel):
    """Base of response bodies: unknown fields ignored (newer backends may add some)."""

    model_config = ConfigDict(extra="ignore")


class ErrorBody(ResponseBody):
    """Every error answer: a stable machine code and a message for people."""

    code: str = Field(description="e.g. invalid_input, unauthorized, forbidden, not_found")
    message: str


class HealthBody(ResponseBody):
    """``GET /health``."""

    status: Literal["ok"]


# --- transcript and summary ------------------------------------------------------------


class SegmentBody(RequestBody):
    """One transcript segment (:class:`~softphone.domain.transcript.TranscriptSegment`)."""

    speaker: Label
    start_s: Seconds
    end_s: Seconds
    text: Text
    final: bool = True
    leg: Annotated[str, Field(strict=True, max_length=32, pattern=r"^[a-z][a-z_]*$")] = "call"
    segment_id: Annotated[str, Field(strict=True, max_length=MAX_ID)] = ""

    @model_validator(mode="after")
    def _ordered(self) -> SegmentBody:
        if self.end_s < self.start_s:
            raise PydanticCustomError("segment_order", "end_s must not be before start_s")
        return self

    @classmethod
    def from_domain(cls, seg: TranscriptSegment) -> SegmentBody:
        """Build (and validate) from the domain object."""
        return cls.model_validate(seg.to_dict())

    def to_domain(self) -> TranscriptSegment:
        """The domain object."""
        return TranscriptSegment(**self.model_dump())


class SegmentOut(ResponseBody):
    """A transcript segment in an answer."""

    speaker: str
    start_s: float
    end_s: float
    text: str
    final: bool = True
    leg: str = "call"
    segment_id: str = ""


class SummaryBody(RequestBody):
    """A summary card (:class:`~softphone.domain.summary.SummaryCard`)."""

    reason: Text = ""
    key_facts: Annotated[list[Item], Field(max_length=MAX_LIST_ITEMS)] = []
    actions_taken: Annotated[list[Item], Field(max_length=MAX_LIST_ITEMS)] = []
    open_items: Annotated[list[Item], Field(max_length=MAX_LIST_ITEMS)] = []
    sentiment: Sentiment = "unknown"
    next_step: Text = ""
    source: Annotated[str, Field(strict=True, max_length=32)] = "offline"
    fallback: bool = False

    @classmethod
    def from_domain(cls, card: SummaryCard) -> SummaryBody:
        """Build (and validate) from the domain object."""
        return cls.model_validate(card.to_dict())

    def to_domain(self) -> SummaryCard:
        """The domain object (strings stripped, empty items dropped)."""
        return SummaryCard.from_dict(self.model_dump())


class SummaryOut(ResponseBody):
    """A summary card in an answer."""

    reason: str = ""
    key_facts: list[str] = []
    actions_taken: list[str] = []
    open_items: list[str] = []
    sentiment: Sentiment = "unknown"
    next_step: str = ""
    source: str = "offline"
    fallback: bool = False

    def to_domain(self) -> SummaryCard:
        """The domain object."""
        return SummaryCard.from_dict(self.model_dump())


# --- transfers --------------------------------------------------------------------------


class TransferRequestBody(RequestBody):
    """``POST /v1/transfers``: A asks to hand its call to B.

    There is no ``call_id``: call ids are the service's own.
    """

    caller: Identity
    from_agent: Identity
    to_agent: Identity
    call_room: RoomName
    mode: Mode = "warm"
    transcript: Annotated[list[SegmentBody], Field(max_length=MAX_SEGMENTS)] = []
    summary: SummaryBody | None = None

    @classmethod
    def from_domain(cls, req: TransferRequest) -> TransferRequestBody:
        """Build (and validate) from the protocol's request."""
        return cls.model_validate(req.to_dict())

    def to_domain(self) -> TransferRequest:
        """The protocol's request, checked as a whole (e.g. not to oneself).

        Raises:
            ValidationError: The fields are fine but do not go together.
        """
        return TransferRequest(
            caller=self.caller,
            from_agent=self.from_agent,
            to_agent=self.to_agent,
            call_room=self.call_room,
            mode=self.mode,
            transcript=tuple(s.to_domain() for s in self.transcript),
            summary=self.summary.to_domain() if self.summary else None,
        ).validate()


class DeclineBody(RequestBody):
    """``POST /v1/transfers/{id}/decline``: B's reason, shown to A."""

    reason: Annotated[str, Field(strict=True, max_length=MAX_REASON)] = ""


class EndReasonOut(ResponseBody):
    """Why a transfer returned or ended."""

    code: ReasonCode
    text: str = ""


class TransitionOut(ResponseBody):
    """One step of a transfer's timeline."""

    phase: Phase
    at: float
    note: str = ""


class TransferOut(ResponseBody):
    """A transfer and its timeline (:class:`~softphone.domain.transfer.TransferSnapshot`)."""

    transfer_id: str
    mode: Mode
    phase: Phase
    call_room: str
    new_room: str
    caller: str
    from_agent: str
    to_agent: str
    summary: SummaryOut | None
    reason: EndReasonOut | None
    strategy: Strategy | None
    timeline: list[TransitionOut]
    version: int

    @classmethod
    def from_domain(cls, snap: TransferSnapshot) -> TransferOut:
        """From the domain snapshot."""
        return cls.model_validate(snap.to_dict())

    def to_domain(self) -> TransferSnapshot:
        """The domain snapshot."""
        return TransferSnapshot.from_dict(self.model_dump())


class TokenOut(ResponseBody):
    """A LiveKit token for one identity in one room (:class:`~softphone.protocol.TokenGrant`)."""

    token: str = Field(description="The JWT: a secret, never log it")
    identity: str
    room: str
    url: str
    expires_at: float

    @classmethod
    def from_domain(cls, grant: TokenGrant) -> TokenOut:
        """From the protocol's grant."""
        return cls.model_validate(grant.to_dict())

    def to_domain(self) -> TokenGrant:
        """The protocol's grant."""
        return TokenGrant.from_dict(self.model_dump())


class TransferTicketOut(ResponseBody):
    """``POST /v1/transfers``' answer: the transfer, R2, the summary and A's consult token."""

    transfer: TransferOut
    new_room: str
    summary: SummaryOut | None
    consult_token: TokenOut | None

    @classmethod
    def from_domain(cls, ticket: TransferTicket) -> TransferTicketOut:
        """From the protocol's ticket."""
        return cls.model_validate(ticket.to_dict())

    def to_domain(self) -> TransferTicket:
        """The protocol's ticket."""
        return TransferTicket.from_dict(self.model_dump())


# --- directory, rooms, tokens, service --------------------------------------------------


class AgentOut(ResponseBody):
    """An online agent (:class:`~softphone.protocol.AgentEntry`)."""

    identity: str
    name: str
    presence: Presence

    @classmethod
    def from_domain(cls, entry: AgentEntry) -> AgentOut:
        """From the protocol's entry."""
        return cls.model_validate(entry.to_dict())

    def to_domain(self) -> AgentEntry:
        """The protocol's entry."""
        return AgentEntry(self.identity, self.name, self.presence)


class RoomOut(ResponseBody):
    """An active room (:class:`~softphone.protocol.RoomEntry`)."""

    name: str
    num_participants: int

    @classmethod
    def from_domain(cls, entry: RoomEntry) -> RoomOut:
        """From the protocol's entry."""
        return cls.model_validate(entry.to_dict())

    def to_domain(self) -> RoomEntry:
        """The protocol's entry."""
        return RoomEntry(self.name, self.num_participants)


class TokenRequestBody(RequestBody):
    """``POST /v1/tokens``: a token for the key's own identity (and role) in ``room``.

    ``supervisor_mode`` only with role ``supervisor`` (default ``listen``).
    """

    room: RoomName
    identity: Identity | None = None
    role: TokenRoleName | None = None
    supervisor_mode: SupervisorMode | None = None


class ServiceInfoOut(ResponseBody):
    """``GET /v1/service`` (:class:`~softphone.protocol.ServiceInfo`)."""

    livekit_url: str
    command_key: str
    lobby_room: str

    @classmethod
    def from_domain(cls, info: ServiceInfo) -> ServiceInfoOut:
        """From the protocol's value."""
        return cls.model_validate(info.to_dict())

    def to_domain(self) -> ServiceInfo:
        """The protocol's value."""
        return ServiceInfo.from_dict(self.model_dump())


# --- calls ------------------------------------------------------------------------------


class CallRequestBody(RequestBody):
    """``POST /v1/calls``: a new call of ``caller`` taken by ``agent``.

    ``caller`` defaults to the key's own identity (a caller key).
    """

    caller: Identity | None = None
    agent: Identity


class CallOut(ResponseBody):
    """A call in the service's registry (:class:`~softphone.protocol.CallInfo`)."""

    call_id: str
    room: str
    caller: str
    agent: str
    consult_rooms: list[str] = []
    created_at: float = 0.0
    ended_at: float | None = None

    @classmethod
    def from_domain(cls, call: CallInfo) -> CallOut:
        """From the protocol's value."""
        return cls.model_validate(call.to_dict())

    def to_domain(self) -> CallInfo:
        """The protocol's value."""
        return CallInfo.from_dict(self.model_dump())


class CallTicketOut(ResponseBody):
    """``POST /v1/calls``' answer: the call and the requester's token for its room."""

    call: CallOut
    token: TokenOut

    @classmethod
    def from_domain(cls, ticket: CallTicket) -> CallTicketOut:
        """From the protocol's ticket."""
        return cls.model_validate(ticket.to_dict())

    def to_domain(self) -> CallTicket:
        """The protocol's ticket."""
        return CallTicket(call=self.call.to_domain(), token=self.token.to_domain())


# --- speech -----------------------------------------------------------------------------


class AudioOut(ResponseBody):
    """What was found in an uploaded audio file."""

    format: str
    codec: str
    duration_s: float
    sample_rate: int
    channels: int
    size_bytes: int


class SpeechTranscriptOut(ResponseBody):
    """What the batch STT heard."""

    provider: str
    duration_s: float
    text: str
    segments: list[SegmentOut]


class SpeechOut(ResponseBody):
    """``POST /v1/speech``' answer: audio info, transcript and summary."""

    audio: AudioOut
    transcript: SpeechTranscriptOut
    summary: SummaryOut
