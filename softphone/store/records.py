"""The service's call records in PostgreSQL: chain of custody, summaries, transfer outcomes.

Redis holds the service's live state; this database holds its history. Every
backend replica writes here (:class:`PostgresRecords` is a
:class:`~softphone.store.custody.CustodyLog`, like the workstation's SQLite
history), and agents and supervisors search it through the API within their
rights: a supervisor sees every call, an agent only the calls it was a party
of (the call's agent, or the from/to agent of one of its transfers).

Tables: ``calls``; ``call_parties`` (who may see a call, and as what);
``transfer_events`` (each step of each transfer, ``detail`` as jsonb);
``summaries`` (the card as jsonb, its source and fallback flag);
``transfer_outcomes`` (one row per finished transfer: how and why it ended).

The schema is versioned: :data:`MIGRATIONS` are applied at :meth:`PostgresRecords.open`,
each once, in its own transaction, recorded in ``schema_migrations``; a
PostgreSQL advisory lock makes replicas that open at the same moment take
turns. Every value goes to the server as a bound parameter; the only SQL text
put together at run time is a choice among fixed fragments.

Times are seconds since the epoch in this API and ``timestamptz`` in the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, get_args

import asyncpg

from softphone.config import Secret
from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.domain.summary import SummaryCard
from softphone.domain.transfer import PHASES, TERMINAL
from softphone.errors import HistoryError, NotFoundError, ValidationError
from softphone.store.history import TransferEventRecord

if TYPE_CHECKING:
    from softphone.store.custody import CustodyLog
    from softphone.store.history import HistoryStore

log = logging.getLogger(__name__)

# Each entry upgrades the schema from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    # 1: calls, parties, the chain of custody, summaries, transfer outcomes
    """
    CREATE TABLE calls (
        call_id text PRIMARY KEY,
        room text NOT NULL,
        caller text NOT NULL DEFAULT '',
        agent text NOT NULL DEFAULT '',
        created_by text NOT NULL DEFAULT '',
        direction text NOT NULL DEFAULT 'inbound',
        created_at timestamptz NOT NULL,
        ended_at timestamptz
    );
    CREATE INDEX calls_recent ON calls (created_at DESC, call_id DESC);
    CREATE TABLE call_parties (
        identity text NOT NULL,
        call_id text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
        role text NOT NULL,
        since timestamptz NOT NULL,
        PRIMARY KEY (identity, call_id, role)
    );
    CREATE INDEX call_parties_call ON call_parties (call_id);
    CREATE TABLE transfer_events (
        id bigserial PRIMARY KEY,
        call_id text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
        transfer_id text NOT NULL,
        phase text NOT NULL,
        from_agent text NOT NULL DEFAULT '',
        to_agent text NOT NULL DEFAULT '',
        detail jsonb NOT NULL DEFAULT '{}',
        at timestamptz NOT NULL
    );
    CREATE INDEX transfer_events_call ON transfer_events (call_id, at, id);
    CREATE INDEX transfer_events_transfer ON transfer_events (transfer_id, at);
    CREATE TABLE summaries (
        id bigserial PRIMARY KEY,
        call_id text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
        card jsonb NOT NULL,
        source text NOT NULL,
        fallback boolean NOT NULL,
        search_text text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL
    );
    CREATE INDEX summaries_call ON summaries (call_id, id);
    CREATE TABLE transfer_outcomes (
        transfer_id text PRIMARY KEY,
        call_id text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
        outcome text NOT NULL,
        reason text NOT NULL DEFAULT '',
        from_agent text NOT NULL DEFAULT '',
        to_agent text NOT NULL DEFAULT '',
        started_at timestamptz NOT NULL,
        ended_at timestamptz NOT NULL
    );
    CREATE INDEX transfer_outcomes_call ON transfer_outcomes (call_id);
    CREATE INDEX transfer_outcomes_ended ON transfer_outcomes (ended_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# pg_advisory_lock key that serializes migrations of this schema (any
# constant unlikely to be used by another application on the same database).
MIGRATION_LOCK_KEY = 0x50F7_0A11_2EC0_4D5
MAX_SEARCH_TEXT = 200
MAX_LIMIT = 200
MAX_DETAIL_BYTES = 64 * 1024
MAX_ID = 128
# Latest time accepted (9999-12-31T23:59:59Z): timestamptz goes further, datetime does not.
MAX_EPOCH_S = 253_402_300_799.0

RecordsRole = Literal["agent", "supervisor"]
PartyRole = Literal["caller", "agent", "supervisor", "creator", "from_agent", "to_agent"]
PARTY_ROLES: tuple[PartyRole, ...] = get_args(PartyRole)
# The parties of a call an agent sees it as.
AGENT_VIEW_ROLES: tuple[PartyRole, ...] = ("agent", "from_agent", "to_agent")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_TOKEN_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CURSOR_RE = re.compile(r"^(\d{1,17})\.([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})$")
# C0 controls and DEL: never in search text (PostgreSQL text cannot even hold NUL).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# SQLSTATE classes worth trying again: connection, rollback (serialization,
# deadlock), insufficient resources, operator intervention (shutdown, starting).
_RETRYABLE_SQLSTATE = ("08", "40", "53", "57")
# Cursor pattern, for the API's schema.
CURSOR_PATTERN = _CURSOR_RE.pattern


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    """One call as the service recorded it.

    Attributes:
        call_id: The service's id of the call.
        room: The call room it started in.
        caller: The caller's identity ("" if not recorded).
        agent: The agent it was first assigned to ("" if not recorded).
        created_by: Who asked for it (the caller, an agent or an integrator).
        direction: ``inbound`` or ``outbound``.
        created_at: Seconds since the epoch.
        ended_at: When it ended (None while it goes on, or if never told).
    """

    call_id: str
    room: str
    caller: str
    agent: str
    created_by: str
    direction: str
    created_at: float
    ended_at: float | None


@dataclasses.dataclass(frozen=True)
class RecordedSummary:
    """A summary card handed over during the call."""

    card: SummaryCard
    created_at: float


@dataclasses.dataclass(frozen=True)
class TransferOutcome:
    """How one transfer ended.

    Attributes:
        transfer_id: The transfer.
        outcome: Its last phase: ``completed``, ``returned`` or ``ended``.
        reason: The end reason's code ("" for ``completed``).
        from_agent: A.
        to_agent: B.
        started_at: Its first recorded step.
        ended_at: Its last step.
    """

    transfer_id: str
    outcome: str
    reason: str
    from_agent: str
    to_agent: str
    started_at: float
    ended_at: float


@dataclasses.dataclass(frozen=True)
class CallDossier:
    """Everything recorded about one call."""

    call: RecordedCall
    parties: list[tuple[str, str]]
    transfers: list[TransferEventRecord]
    summaries: list[RecordedSummary]
    outcomes: list[TransferOutcome]


@dataclasses.dataclass(frozen=True)
class CallPage:
    """One page of search results, most recent first.

    Attributes:
        calls: The calls on this page.
        next_before: Pass as ``before`` for the next page (None: this is the last).
    """

    calls: list[RecordedCall]
    next_before: str | None


def _when(value: float | None, field: str) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, "must be seconds since the epoch")
    if not math.isfinite(value) or not 0 <= value <= MAX_EPOCH_S:
        raise ValidationError(field, "must be a time between 1970 and 9999")
    return _EPOCH + dt.timedelta(seconds=float(value))


def _epoch(value: dt.datetime) -> float:
    return (value - _EPOCH).total_seconds()


def _micros(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_ID or not _ID_RE.fullmatch(value):
        raise ValidationError(
            field, f"must be at most {MAX_ID} letters, digits, '_', '.', ':' or '-'"
        )
    return value


def _optional_identity(value: str, field: str) -> str:
    return validate_identity(value, field) if value else ""


def _no_nul(value: Any) -> Any:
    """``value`` with NUL characters replaced (PostgreSQL text and jsonb refuse them)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nul(v) for v in value]
    return value


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _cursor(call: RecordedCall, created_at: dt.datetime) -> str:
    return f"{_micros(created_at)}.{call.call_id}"


def _parse_cursor(value: str) -> tuple[dt.datetime, str]:
    match = _CURSOR_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValidationError("before", "is not a cursor this service gave out")
    micros = int(match.group(1))
    if micros > MAX_EPOCH_S * 1_000_000:
        raise ValidationError("before", "is not a cursor this service gave out")
    return _EPOCH + dt.timedelta(microseconds=micros), match.group(2)


@contextlib.contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Re-raise the driver's failures as :class:`HistoryError` (never quoting values)."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError:
        raise HistoryError(f"{what} refused: unknown call") from None
    except asyncpg.UniqueViolationError:
        raise HistoryError(f"{what} refused: duplicate") from None
    except asyncpg.PostgresError as exc:
        retryable = str(exc.sqlstate or "")[:2] in _RETRYABLE_SQLSTATE
        raise HistoryError(f"{what} failed ({type(exc).__name__})", retryable=retryable) from None
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # InternalClientError: a connection the server dropped mid-exchange.
        raise HistoryError(
            f"{what} failed: the records database is unreachable ({type(exc).__name__})",
            retryable=True,
        ) from None


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it had.

    Holds an advisory lock meanwhile, so replicas opening at once take turns:
    the first applies what is missing, the others find nothing left to do.

    Raises:
        HistoryError: The database is newer than this program understands.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        had = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
        if had > SCHEMA_VERSION:
            raise HistoryError(
                f"records database schema {had} is newer than this softphone ({SCHEMA_VERSION})"
            )
        for version in range(had + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("records schema migrated", extra={"version": version})
        return had
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


_CALL_COLUMNS = (
    "c.call_id, c.room, c.caller, c.agent, c.created_by, c.direction, c.created_at, c.ended_at"
)


def _call(row: asyncpg.Record) -> RecordedCall:
    return RecordedCall(
        call_id=row["call_id"],
        room=row["room"],
        caller=row["caller"],
        agent=row["agent"],
        created_by=row["created_by"],
        direction=row["direction"],
        created_at=_epoch(row["created_at"]),
        ended_at=_epoch(row["ended_at"]) if row["ended_at"] is not None else None,
    )


class PostgresRecords:
    """The service's call records in one PostgreSQL database, shared by every replica.

    Use as ``async with PostgresRecords(dsn) as records:``.

    Args:
        dsn: ``postgresql://user:password@host:port/database``.
        min_connections: Connections the pool keeps open.
        max_connections: Most connections at once (per replica).
        command_timeout_s: Longest one statement may take.
    """

    def __init__(
        self,
        dsn: Secret | str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        command_timeout_s: float = 15.0,
    ) -> None:
        self._dsn = dsn if isinstance(dsn, Secret) else Secret(dsn)
        self._min = min_connections
        self._max = max_connections
        self._timeout = command_timeout_s
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresRecords(open={self._pool is not None})"

    async def open(self) -> PostgresRecords:
        """Connect and bring the schema up to date.

        Raises:
            HistoryError: The database cannot be reached or migrated.
        """
        try:
            pool = await asyncpg.create_pool(
                self._dsn.get(),
                min_size=self._min,
                max_size=self._max,
                command_timeout=self._timeout,
                init=_init_connection,
            )
        except (ValueError, asyncpg.ClientConfigurationError):
            # from None: the driver's message may quote the URL, password included.
            raise HistoryError("the records database URL is not valid") from None
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            raise HistoryError("the records database refused the credentials") from None
        except asyncpg.InvalidCatalogNameError:
            raise HistoryError("the records database does not exist") from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise HistoryError(
                f"cannot reach the records database ({type(exc).__name__})", retryable=True
            ) from None
        try:
            async with pool.acquire() as conn:
                with _db_errors("records migration"):
                    await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return self

    async def aclose(self) -> None:
        """Close every connection (waits for statements under way)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> PostgresRecords:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise HistoryError("the records store is not open")
        with _db_errors(what):
            async with self._pool.acquire() as conn:
                yield conn

    # ---- health --------------------------------------------------------------------

    async def check(self) -> None:
        """Raise unless the database answers (for readiness checks).

        Raises:
            HistoryError: It does not (retryable).
        """
        async with self._conn("records check") as conn:
            await conn.fetchval("SELECT 1")

    async def schema_version(self) -> int:
        """The version the database's schema is at."""
        async with self._conn("records read") as conn:
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

    # ---- writes (CustodyLog) -------------------------------------------------------

    async def start_call(
        self,
        room: str,
        *,
        call_id: str | None = None,
        direction: str = "inbound",
        started_at: float | None = None,
        caller: str = "",
        agent: str = "",
        created_by: str = "",
    ) -> str:
        """Record a new call and return its id.

        Recording the same call again (a retry) changes nothing.

        Args:
            room: Its call room.
            call_id: The service's id (default: a new one).
            direction: ``inbound`` or ``outbound``.
            started_at: When it was created (default: now).
            caller: The caller's identity, if known here.
            agent: The agent it is assigned to, if known here.
            created_by: Who asked for it, if known here.

        Raises:
            ValidationError: A bad name or id.
            HistoryError: The id is already recorded for another room, or the write failed.
        """
        validate_room_name(room)
        cid = _check_id(call_id, "call_id") if call_id is not None else uuid.uuid4().hex
        if not isinstance(direction, str) or not _TOKEN_RE.fullmatch(direction):
            raise ValidationError("direction", "must be a short lower-case word")
        parties: list[tuple[str, PartyRole]] = [
            (_optional_identity(caller, "caller"), "caller"),
            (_optional_identity(agent, "agent"), "agent"),
            (_optional_identity(created_by, "created_by"), "creator"),
        ]
        at = _when(started_at, "started_at")
        async with self._conn("recording the call") as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO calls (call_id, room, caller, agent, created_by, direction, "
                "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (call_id) DO NOTHING RETURNING call_id",
                cid,
                room,
                parties[0][0],
                parties[1][0],
                parties[2][0],
                direction,
                at,
            )
            if inserted is None:
                known = await conn.fetchval("SELECT room FROM calls WHERE call_id = $1", cid)
                if known != room:
                    raise HistoryError(
                        "recording the call refused: the id is recorded for another room",
                        details={"call_id": cid},
                    )
            await self._add_parties(conn, cid, [(i, r) for i, r in parties if i], at)
        return cid

    async def add_participant(
        self, call_id: str, identity: str, role: str, joined_at: float | None = None
    ) -> None:
        """Record that ``identity`` is a party of the call as ``role``.

        The first ``caller``, ``agent`` and ``creator`` recorded also fill the
        call's own fields. An agent sees the calls it is the ``agent`` of.

        Raises:
            ValidationError: A bad identity or a role not in :data:`PARTY_ROLES`.
            HistoryError: Unknown call, or the write failed.
        """
        _check_id(call_id, "call_id")
        validate_identity(identity)
        if role not in PARTY_ROLES:
            raise ValidationError("role", f"must be one of {', '.join(PARTY_ROLES)}")
        at = _when(joined_at, "joined_at")
        async with self._conn("recording a party") as conn, conn.transaction():
            await self._add_parties(conn, call_id, [(identity, role)], at)
            column = {"caller": "caller", "agent": "agent", "creator": "created_by"}.get(role)
            if column is not None:
                # The column name comes from the fixed map above, never from input.
                await conn.execute(
                    f"UPDATE calls SET {column} = $2 WHERE call_id = $1 AND {column} = ''",
                    call_id,
                    identity,
                )

    @staticmethod
    async def _add_parties(
        conn: asyncpg.Connection,
        call_id: str,
        parties: Sequence[tuple[str, str]],
        at: dt.datetime,
    ) -> None:
        if not parties:
            return
        await conn.executemany(
            "INSERT INTO call_parties (identity, call_id, role, since) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING",
            [(identity, call_id, role, at) for identity, role in parties],
        )

    async def end_call(self, call_id: str, ended_at: float | None = None) -> None:
        """Mark a call as ended (the first end recorded stands; an unknown call is ignored)."""
        _check_id(call_id, "call_id")
        at = _when(ended_at, "ended_at")
        async with self._conn("ending the call") as conn:
            await conn.execute(
                "UPDATE calls SET ended_at = $2 WHERE call_id = $1 AND ended_at IS NULL",
                call_id,
                at,
            )

    async def add_summary(self, call_id: str, card: SummaryCard) -> int:
        """Store a summary card of the call; returns its row id.

        Raises:
            HistoryError: Unknown call, or the write failed.
        """
        _check_id(call_id, "call_id")
        data = _no_nul(card.to_dict())
        words = [data["reason"], *data["key_facts"], *data["actions_taken"]]
        words += [*data["open_items"], data["next_step"]]
        async with self._conn("storing the summary") as conn:
            row_id = await conn.fetchval(
                "INSERT INTO summaries (call_id, card, source, fallback, search_text, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                call_id,
                data,
                data["source"],
                card.fallback,
                "\n".join(w for w in words if w),
                _when(None, "created_at"),
            )
        return int(row_id)

    async def add_transfer_event(
        self,
        call_id: str,
        transfer_id: str,
        phase: str,
        *,
        from_agent: str = "",
        to_agent: str = "",
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> int:
        """Store one step of a transfer (the chain of custody); returns its row id.

        A and B become parties of the call (so each finds it). A step into a
        final phase (``completed``, ``returned``, ``ended``) also records the
        transfer's outcome, once.

        Raises:
            ValidationError: A bad id, identity, phase or detail.
            HistoryError: Unknown call, or the write failed.
        """
        _check_id(call_id, "call_id")
        _check_id(transfer_id, "transfer_id")
        if phase not in PHASES:
            raise ValidationError("phase", f"must be one of {', '.join(PHASES)}")
        from_agent = _optional_identity(from_agent, "from_agent")
        to_agent = _optional_identity(to_agent, "to_agent")
        if detail is not None and not isinstance(detail, dict):
            raise ValidationError("detail", "must be an object")
        clean = _no_nul(detail or {})
        try:
            size = len(json.dumps(clean, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValidationError("detail", "must be plain JSON") from exc
        if size > MAX_DETAIL_BYTES:
            raise ValidationError("detail", f"must be at most {MAX_DETAIL_BYTES} bytes as JSON")
        when = _when(at, "at")
        parties = [(from_agent, "from_agent"), (to_agent, "to_agent")]
        async with self._conn("recording the transfer step") as conn, conn.transaction():
            row_id = await conn.fetchval(
                "INSERT INTO transfer_events (call_id, transfer_id, phase, from_agent, to_agent, "
                "detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                call_id,
                transfer_id,
                phase,
                from_agent,
                to_agent,
                clean,
                when,
            )
            await self._add_parties(conn, call_id, [(i, r) for i, r in parties if i], when)
            if phase in TERMINAL:
                reason = clean.get("reason")
                code = reason.get("code", "") if isinstance(reason, dict) else ""
                await conn.execute(
                    "INSERT INTO transfer_outcomes (transfer_id, call_id, outcome, reason, "
                    "from_agent, to_agent, started_at, ended_at) "
                    "SELECT $1, $2, $3, $4, $5, $6, min(at), $7 FROM transfer_events "
                    "WHERE transfer_id = $1 ON CONFLICT (transfer_id) DO NOTHING",
                    transfer_id,
                    call_id,
                    phase,
                    str(code)[:64],
                    from_agent,
                    to_agent,
                    when,
                )
        return int(row_id)

    # ---- reads ---------------------------------------------------------------------

    async def search_calls(
        self,
        *,
        identity: str,
        role: RecordsRole,
        text: str = "",
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> CallPage:
        """Calls ``identity`` may see, most recent first, one page at a time.

        Args:
            identity: Who asks.
            role: ``supervisor`` (every call) or ``agent`` (calls it was a party of).
            text: Matches, case-insensitively and literally, anywhere in the
                call's id, room, caller, agent, parties or summaries.
            agent: Only calls this agent was a party of.
            since: Only calls created at or after (seconds since the epoch).
            until: Only calls created before.
            limit: Page size, 1 to :data:`MAX_LIMIT`.
            before: The previous page's ``next_before``.

        Raises:
            ValidationError: A bad argument (nothing is run).
            HistoryError: The read failed.
        """
        validate_identity(identity)
        if role not in get_args(RecordsRole):
            raise ValidationError("role", "only agents and supervisors search records")
        if not isinstance(text, str):
            raise ValidationError("text", "must be text")
        if len(text) > MAX_SEARCH_TEXT:
            raise ValidationError("text", f"must be at most {MAX_SEARCH_TEXT} characters")
        if _CONTROL_RE.search(text):
            raise ValidationError("text", "must not contain control characters")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        where: list[str] = []
        party = (
            "EXISTS (SELECT 1 FROM call_parties p WHERE p.call_id = c.call_id "
            "AND p.identity = {} AND p.role = ANY({}::text[]))"
        )
        if role == "agent":
            where.append(party.format(arg(identity), arg(list(AGENT_VIEW_ROLES))))
        if agent is not None:
            validate_identity(agent, "agent")
            where.append(party.format(arg(agent), arg(list(AGENT_VIEW_ROLES))))
        if since is not None:
            where.append(f"c.created_at >= {arg(_when(since, 'since'))}")
        if until is not None:
            where.append(f"c.created_at < {arg(_when(until, 'until'))}")
        if before is not None:
            at, cid = _parse_cursor(before)
            where.append(f"(c.created_at, c.call_id) < ({arg(at)}, {arg(cid)})")
        if text:
            like = arg(_like(text))
            where.append(
                f"(c.call_id ILIKE {like} OR c.room ILIKE {like} OR c.caller ILIKE {like} "
                f"OR c.agent ILIKE {like} OR EXISTS (SELECT 1 FROM call_parties q "
                f"WHERE q.call_id = c.call_id AND q.identity ILIKE {like}) "
                f"OR EXISTS (SELECT 1 FROM summaries s WHERE s.call_id = c.call_id "
                f"AND s.search_text ILIKE {like}))"
            )
        sql = (
            f"SELECT {_CALL_COLUMNS} FROM calls c"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY c.created_at DESC, c.call_id DESC LIMIT {arg(limit + 1)}"
        )
        async with self._conn("searching records") as conn:
            rows = await conn.fetch(sql, *args)
        calls = [_call(r) for r in rows[:limit]]
        more = len(rows) > limit
        next_before = _cursor(calls[-1], rows[limit - 1]["created_at"]) if more else None
        return CallPage(calls=calls, next_before=next_before)

    async def get_call(self, call_id: str, *, identity: str, role: RecordsRole) -> CallDossier:
        """Everything recorded about a call ``identity`` may see.

        Raises:
            ValidationError: A bad argument.
            NotFoundError: No such call, or not one ``identity`` may see (the same answer).
            HistoryError: The read failed.
        """
        validate_identity(identity)
        if role not in get_args(RecordsRole):
            raise ValidationError("role", "only agents and supervisors read records")
        _check_id(call_id, "call_id")
        async with (
            self._conn("reading the call") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                f"SELECT {_CALL_COLUMNS} FROM calls c WHERE c.call_id = $1 AND ($2 OR EXISTS "
                "(SELECT 1 FROM call_parties p WHERE p.call_id = c.call_id "
                "AND p.identity = $3 AND p.role = ANY($4::text[])))",
                call_id,
                role == "supervisor",
                identity,
                list(AGENT_VIEW_ROLES),
            )
            if row is None:
                raise NotFoundError("call not found", details={"call_id": call_id})
            parties = await conn.fetch(
                "SELECT identity, role FROM call_parties WHERE call_id = $1 ORDER BY since, role",
                call_id,
            )
            events = await conn.fetch(
                "SELECT transfer_id, at, phase, from_agent, to_agent, detail "
                "FROM transfer_events WHERE call_id = $1 ORDER BY at, id",
                call_id,
            )
            summaries = await conn.fetch(
                "SELECT card, created_at FROM summaries WHERE call_id = $1 ORDER BY id", call_id
            )
            outcomes = await conn.fetch(
                "SELECT transfer_id, outcome, reason, from_agent, to_agent, started_at, ended_at "
                "FROM transfer_outcomes WHERE call_id = $1 ORDER BY ended_at, transfer_id",
                call_id,
            )
        return CallDossier(
            call=_call(row),
            parties=[(str(p["identity"]), str(p["role"])) for p in parties],
            transfers=[
                TransferEventRecord(
                    transfer_id=e["transfer_id"],
                    at=_epoch(e["at"]),
                    phase=e["phase"],
                    from_agent=e["from_agent"],
                    to_agent=e["to_agent"],
                    detail=e["detail"],
                )
                for e in events
            ],
            summaries=[
                RecordedSummary(SummaryCard.from_dict(s["card"]), _epoch(s["created_at"]))
                for s in summaries
            ],
            outcomes=[
                TransferOutcome(
                    transfer_id=o["transfer_id"],
                    outcome=o["outcome"],
                    reason=o["reason"],
                    from_agent=o["from_agent"],
                    to_agent=o["to_agent"],
                    started_at=_epoch(o["started_at"]),
                    ended_at=_epoch(o["ended_at"]),
                )
                for o in outcomes
            ],
        )


if TYPE_CHECKING:

    def _both_are_custody_logs(
        records: PostgresRecords, history: HistoryStore
    ) -> tuple[CustodyLog, CustodyLog]:
        """Checked by mypy only: either store can be the orchestrator's custody log."""
        return records, history
