"""The records API: agents and supervisors search the service's call records.

``GET /v1/records/calls`` searches (most recent first, a page at a time) and
``GET /v1/records/calls/{call_id}`` answers everything recorded about one
call: its parties, the chain of custody of its transfers, summaries and
transfer outcomes. A supervisor key sees every call; an agent key only the
calls its identity was a party of (assigned agent, or A or B of a transfer):
any other call is the same 404 as one that does not exist. Other keys get a
403.

:func:`records_router` is mounted by the app (:mod:`softphone.backend.app`),
which also supplies authentication and turns the softphone's errors into
statuses (bad input 400, not found 404, unconfigured 503). An unreachable
database is a 503 ``history_error`` here, any other database failure a 500.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from softphone.errors import HistoryError
from softphone.http_models import ID_PATTERN, IDENTITY_PATTERN, MAX_ID, ErrorBody
from softphone.store.records import (
    CURSOR_PATTERN,
    MAX_LIMIT,
    MAX_SEARCH_TEXT,
    CallDossier,
    PostgresRecords,
    RecordedCall,
    RecordsRole,
)

log = logging.getLogger(__name__)

READER_ROLES: tuple[RecordsRole, ...] = ("agent", "supervisor")
# Search text: printable, no control characters (NUL included).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


class Reader(Protocol):
    """Who a request acts as (the app's principal): an identity and a role."""

    @property
    def identity(self) -> str:
        """The key's identity."""
        ...

    @property
    def role(self) -> str:
        """The key's role (agent, caller, supervisor, service)."""
        ...


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RecordedCallOut(_Out):
    """One recorded call (times in seconds since the epoch)."""

    call_id: str
    room: str
    caller: str
    agent: str
    created_by: str
    direction: str
    created_at: float
    ended_at: float | None = None

    @classmethod
    def from_domain(cls, call: RecordedCall) -> RecordedCallOut:
        """From the store's value."""
        return cls(**call.__dict__)


class CallPageOut(_Out):
    """A page of search results; pass ``next_before`` as ``before`` for the next one."""

    calls: list[RecordedCallOut]
    next_before: str | None = None


class PartyOut(_Out):
    """Someone who took part in a call, and as what."""

    identity: str
    role: str


class CustodyEventOut(_Out):
    """One step of a transfer of the call."""

    transfer_id: str
    phase: str
    from_agent: str
    to_agent: str
    at: float
    detail: dict[str, Any]


class RecordedSummaryOut(_Out):
    """A summary card handed over during the call."""

    card: dict[str, Any]
    created_at: float


class TransferOutcomeOut(_Out):
    """How one transfer of the call ended."""

    transfer_id: str
    outcome: str
    reason: str
    from_agent: str
    to_agent: str
    started_at: float
    ended_at: float


class CallDossierOut(_Out):
    """Everything recorded about one call."""

    call: RecordedCallOut
    parties: list[PartyOut]
    transfers: list[CustodyEventOut]
    summaries: list[RecordedSummaryOut]
    outcomes: list[TransferOutcomeOut]

    @classmethod
    def from_domain(cls, dossier: CallDossier) -> CallDossierOut:
        """From the store's value."""
        return cls(
            call=RecordedCallOut.from_domain(dossier.call),
            parties=[PartyOut(identity=i, role=r) for i, r in dossier.parties],
            transfers=[CustodyEventOut(**e.__dict__) for e in dossier.transfers],
            summaries=[
                RecordedSummaryOut(card=s.card.to_dict(), created_at=s.created_at)
                for s in dossier.summaries
            ],
            outcomes=[TransferOutcomeOut(**o.__dict__) for o in dossier.outcomes],
        )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A bad query parameter (`invalid_input`)"},
    401: {"model": ErrorBody, "description": "No API key, or an unknown one (`unauthorized`)"},
    403: {"model": ErrorBody, "description": "Not an agent or supervisor key (`forbidden`)"},
    500: {"model": ErrorBody, "description": "The records database failed (`history_error`)"},
    503: {
        "model": ErrorBody,
        "description": "Records not configured, or the database unreachable; retry later",
    },
}


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # a time without a zone is UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def _refused(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _reader_role(who: Reader) -> RecordsRole | None:
    for role in READER_ROLES:
        if who.role == role:
            return role
    return None


def _store_failed(exc: HistoryError) -> JSONResponse:
    log.error("records request failed", extra={"code": exc.code, "retryable": exc.retryable})
    return _refused(503 if exc.retryable else 500, exc.code, exc.message)


def records_router(
    get_records: Callable[[], PostgresRecords],
    principal_dependency: Callable[..., Awaitable[Reader]],
) -> APIRouter:
    """The ``/v1/records`` routes.

    Args:
        get_records: The open records store (called per request; it may raise
            :class:`~softphone.errors.ConfigError` when there is none).
        principal_dependency: The app's authentication dependency (answers
            who the request acts as, or raises a 401).
    """
    router = APIRouter(prefix="/v1/records", tags=["records"])
    # A default, not an Annotated alias: FastAPI resolves postponed annotations
    # in the module's globals, where a local alias is not found.
    who_is = Depends(principal_dependency)

    def forbidden(who: Reader) -> JSONResponse:
        return _refused(
            403, "forbidden", f"a {who.role} key cannot read records (only agent, supervisor)"
        )

    @router.get(
        "/calls",
        summary="Search the call records this key may see, most recent first",
        description="A supervisor sees every call; an agent the calls it was a party of. "
        "`q` matches the call id, room, parties and summaries (case-insensitive, literal). "
        "`since`/`until` are ISO 8601 times (UTC unless a zone is given) or seconds since "
        "the epoch. Page with `before` = the previous page's `next_before`.",
        response_model=CallPageOut,
        responses=_RESPONSES,
    )
    async def search(
        q: Annotated[
            str, Query(max_length=MAX_SEARCH_TEXT, pattern=TEXT_PATTERN, description="Text")
        ] = "",
        agent: Annotated[
            str | None,
            Query(max_length=MAX_ID, pattern=IDENTITY_PATTERN, description="Agent party"),
        ] = None,
        since: Annotated[dt.datetime | None, Query(description="Created at or after")] = None,
        until: Annotated[dt.datetime | None, Query(description="Created before")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")] = 50,
        before: Annotated[
            str | None, Query(max_length=160, pattern=CURSOR_PATTERN, description="Cursor")
        ] = None,
        who: Reader = who_is,
    ) -> Any:
        role = _reader_role(who)
        if role is None:
            return forbidden(who)
        try:
            page = await get_records().search_calls(
                identity=who.identity,
                role=role,
                text=q,
                agent=agent,
                since=_epoch(since),
                until=_epoch(until),
                limit=limit,
                before=before,
            )
        except HistoryError as exc:
            return _store_failed(exc)
        return CallPageOut(
            calls=[RecordedCallOut.from_domain(c) for c in page.calls],
            next_before=page.next_before,
        )

    @router.get(
        "/calls/{call_id}",
        summary="Everything recorded about one call: parties, custody, summaries, outcomes",
        description="A call the key may not see is the same 404 as one that does not exist.",
        response_model=CallDossierOut,
        responses={**_RESPONSES, 404: {"model": ErrorBody, "description": "No such call"}},
    )
    async def call(
        call_id: Annotated[
            str,
            PathParam(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN, description="Call id"),
        ],
        who: Reader = who_is,
    ) -> Any:
        role = _reader_role(who)
        if role is None:
            return forbidden(who)
        try:
            dossier = await get_records().get_call(call_id, identity=who.identity, role=role)
        except HistoryError as exc:
            return _store_failed(exc)
        return CallDossierOut.from_domain(dossier)

    return router
