"""Call history in SQLite: calls, participants, transcript, summaries, transfers, recordings.

One database file per profile, in WAL mode, with versioned migrations
(``PRAGMA user_version``). All SQLite work runs on one dedicated worker
thread, so the event loop (and the UI) never waits on disk; the async methods
hand work to that thread. Every write is its own transaction: once a method
returns, the row survives a crash of the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import HistoryError, ValidationError

T = TypeVar("T")

# Each entry upgrades the schema from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    # 1: calls, participants, transcript segments
    """
    CREATE TABLE calls (
        id TEXT PRIMARY KEY,
        room TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        direction TEXT NOT NULL DEFAULT 'inbound'
    );
    CREATE TABLE participants (
        call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        identity TEXT NOT NULL,
        role TEXT NOT NULL,
        joined_at REAL NOT NULL,
        left_at REAL,
        PRIMARY KEY (call_id, identity, joined_at)
    );
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        speaker TEXT NOT NULL,
        start_s REAL NOT NULL,
        end_s REAL NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX segments_call ON segments(call_id, start_s);
    """,
    # 2: summaries, transfer events, recordings; segment legs and ids
    """
    ALTER TABLE segments ADD COLUMN leg TEXT NOT NULL DEFAULT 'call';
    ALTER TABLE segments ADD COLUMN segment_id TEXT NOT NULL DEFAULT '';
    CREATE TABLE summaries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        card TEXT NOT NULL
    );
    CREATE TABLE transfer_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        transfer_id TEXT NOT NULL,
        at REAL NOT NULL,
        phase TEXT NOT NULL,
        from_agent TEXT NOT NULL DEFAULT '',
        to_agent TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX transfer_events_call ON transfer_events(call_id, at);
    CREATE TABLE recordings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        speaker TEXT NOT NULL,
        path TEXT NOT NULL,
        started_at REAL NOT NULL,
        leg TEXT NOT NULL DEFAULT 'call'
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call as stored."""

    id: str
    room: str
    started_at: float
    ended_at: float | None
    direction: str


@dataclasses.dataclass(frozen=True)
class TransferEventRecord:
    """One step of a transfer, as stored: the chain of custody."""

    transfer_id: str
    at: float
    phase: str
    from_agent: str
    to_agent: str
    detail: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RecordingRecord:
    """A recording file of one speaker in one call."""

    speaker: str
    path: str
    started_at: float
    leg: str


@dataclasses.dataclass(frozen=True)
class CallDetail:
    """Everything stored about one call."""

    call: CallRecord
    participants: list[tuple[str, str]]
    segments: list[TranscriptSegment]
    summaries: list[SummaryCard]
    transfers: list[TransferEventRecord]
    recordings: list[RecordingRecord]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a database to :data:`SCHEMA_VERSION`; returns the version it had.

    Raises:
        HistoryError: The database is newer than this program understands.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"history database schema {version} is newer than this softphone ({SCHEMA_VERSION})"
        )
    for target in range(version, SCHEMA_VERSION):
        # executescript commits first; wrap each step so it is all-or-nothing.
        conn.executescript(
            f"BEGIN; {MIGRATIONS[target]}; PRAGMA user_version = {target + 1}; COMMIT;"
        )
    return int(version)


class HistoryStore:
    """The profile's call history.

    Use as ``async with HistoryStore(path) as history:``.

    Args:
        path: The SQLite file; created (with its directory) if missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="history")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> HistoryStore:
        """Open (creating and migrating as needed) the database.

        Raises:
            HistoryError: The file cannot be opened or migrated.
        """
        try:
            await self._run(self._open)
        except BaseException:
            self._pool.shutdown(wait=False)
            raise
        return self

    def _open(self) -> None:
        try:
            self._make_private()
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            migrate(conn)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open the history database at {self.path}") from exc
        self._conn = conn

    def _make_private(self) -> None:
        """Create the database file readable by the user only (0600).

        SQLite creates its -wal, -shm and -journal files with the database
        file's mode, so a private database keeps them private too; files left
        by an older version are tightened here. No umask change: it is
        process-wide and other threads create files at the same time.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
        except OSError as exc:
            raise HistoryError(f"cannot create the history database at {self.path}") from exc

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryError("the history store is not open")
        return self._conn

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        def run() -> int:
            try:
                with self._db() as conn:  # one transaction
                    cur = conn.execute(sql, params)
                    return int(cur.lastrowid or 0)
            except sqlite3.IntegrityError as exc:
                raise HistoryError("history write refused: unknown call or duplicate") from exc
            except sqlite3.Error as exc:
                raise HistoryError("history write failed", retryable=True) from exc

        return await self._run(run)

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            try:
                return list(self._db().execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise HistoryError("history read failed", retryable=True) from exc

        return await self._run(run)

    async def start_call(
        self,
        room: str,
        *,
        call_id: str | None = None,
        direction: str = "inbound",
        started_at: float | None = None,
    ) -> str:
        """Record a new call and return its id."""
        if not room:
            raise ValidationError("room", "must not be empty")
        cid = call_id or uuid.uuid4().hex
        await self._write(
            "INSERT INTO calls (id, room, started_at, direction) VALUES (?, ?, ?, ?)",
            (cid, room, started_at or time.time(), direction),
        )
        return cid

    async def end_call(self, call_id: str, ended_at: float | None = None) -> None:
        """Mark a call as ended."""
        await self._write(
            "UPDATE calls SET ended_at = ? WHERE id = ?", (ended_at or time.time(), call_id)
        )

    async def add_participant(
        self, call_id: str, identity: str, role: str, joined_at: float | None = None
    ) -> None:
        """Record that ``identity`` joined the call as ``role``."""
        await self._write(
            "INSERT OR IGNORE INTO participants (call_id, identity, role, joined_at) "
            "VALUES (?, ?, ?, ?)",
            (call_id, identity, role, joined_at or time.time()),
        )

    async def add_segment(self, call_id: str, segment: TranscriptSegment) -> int:
        """Store a final transcript segment (a final one replaces its partial)."""
        if segment.segment_id:
            await self._write(
                "DELETE FROM segments WHERE call_id = ? AND segment_id = ?",
                (call_id, segment.segment_id),
            )
        return await self._write(
            "INSERT INTO segments (call_id, speaker, start_s, end_s, text, leg, segment_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                call_id,
                segment.speaker,
                segment.start_s,
                segment.end_s,
                segment.text,
                segment.leg,
                segment.segment_id,
            ),
        )

    async def add_summary(self, call_id: str, card: SummaryCard) -> int:
        """Store a summary card of the call."""
        return await self._write(
            "INSERT INTO summaries (call_id, created_at, card) VALUES (?, ?, ?)",
            (call_id, time.time(), json.dumps(card.to_dict())),
        )

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
        """Store one step of a transfer (chain of custody)."""
        return await self._write(
            "INSERT INTO transfer_events (call_id, transfer_id, at, phase, from_agent, "
            "to_agent, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                call_id,
                transfer_id,
                at or time.time(),
                phase,
                from_agent,
                to_agent,
                json.dumps(detail or {}),
            ),
        )

    async def add_recording(
        self,
        call_id: str,
        speaker: str,
        path: Path,
        *,
        leg: str = "call",
        started_at: float | None = None,
    ) -> int:
        """Register a recording file of one speaker."""
        return await self._write(
            "INSERT INTO recordings (call_id, speaker, path, started_at, leg) "
            "VALUES (?, ?, ?, ?, ?)",
            (call_id, speaker, str(path), started_at or time.time(), leg),
        )

    async def list_calls(self, *, search: str = "", limit: int = 100) -> list[CallRecord]:
        """Most recent calls first; ``search`` matches room, participant or transcript text."""
        if search:
            like = f"%{search}%"
            rows = await self._read(
                "SELECT id, room, started_at, ended_at, direction FROM calls c WHERE "
                "c.room LIKE ? OR EXISTS (SELECT 1 FROM participants p WHERE p.call_id = c.id "
                "AND p.identity LIKE ?) OR EXISTS (SELECT 1 FROM segments s WHERE "
                "s.call_id = c.id AND s.text LIKE ?) ORDER BY started_at DESC LIMIT ?",
                (like, like, like, limit),
            )
        else:
            rows = await self._read(
                "SELECT id, room, started_at, ended_at, direction FROM calls "
                "ORDER BY started_at DESC LIMIT ?",
                (limit,),
            )
        return [CallRecord(*r) for r in rows]

    async def get_call(self, call_id: str) -> CallDetail:
        """Everything stored about one call.

        Raises:
            HistoryError: No such call.
        """
        rows = await self._read(
            "SELECT id, room, started_at, ended_at, direction FROM calls WHERE id = ?", (call_id,)
        )
        if not rows:
            raise HistoryError("no such call", details={"call_id": call_id})
        parts = await self._read(
            "SELECT identity, role FROM participants WHERE call_id = ? ORDER BY joined_at",
            (call_id,),
        )
        segs = await self._read(
            "SELECT speaker, start_s, end_s, text, leg, segment_id FROM segments "
            "WHERE call_id = ? ORDER BY start_s, id",
            (call_id,),
        )
        sums = await self._read(
            "SELECT card FROM summaries WHERE call_id = ? ORDER BY id", (call_id,)
        )
        transfers = await self._read(
            "SELECT transfer_id, at, phase, from_agent, to_agent, detail FROM transfer_events "
            "WHERE call_id = ? ORDER BY at, id",
            (call_id,),
        )
        recs = await self._read(
            "SELECT speaker, path, started_at, leg FROM recordings WHERE call_id = ? ORDER BY id",
            (call_id,),
        )
        return CallDetail(
            call=CallRecord(*rows[0]),
            participants=[(str(a), str(b)) for a, b in parts],
            segments=[
                TranscriptSegment(speaker=s, start_s=a, end_s=b, text=t, leg=leg, segment_id=i)
                for s, a, b, t, leg, i in segs
            ],
            summaries=[SummaryCard.from_dict(json.loads(c)) for (c,) in sums],
            transfers=[
                TransferEventRecord(t, at, ph, fa, ta, json.loads(d))
                for t, at, ph, fa, ta, d in transfers
            ],
            recordings=[RecordingRecord(*r) for r in recs],
        )

    async def schema_version(self) -> int:
        """The database's schema version."""
        rows = await self._read("PRAGMA user_version")
        return int(rows[0][0])

    async def aclose(self) -> None:
        """Close the database and stop the worker thread."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        self._pool.shutdown(wait=True)

    async def __aenter__(self) -> HistoryStore:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
