"""PostgresRecords on a real PostgreSQL: migrations, rights, hostile input, paging, outages.

Each test gets a database of its own on the session's server (``postgres``).
The last test runs a real warm transfer (real LiveKit server, real RTC
parties) through the orchestrator with these records as its custody log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from softphone.config import Secret
from softphone.domain.summary import SummaryCard
from softphone.errors import HistoryError, NotFoundError, SoftphoneError, ValidationError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.postgres_server import LocalPostgres
from softphone.server.token_minter import TokenMinter
from softphone.store.records import (
    MAX_LIMIT,
    MAX_SEARCH_TEXT,
    SCHEMA_VERSION,
    PostgresRecords,
)
from tests.transfer.conftest import embedded_service, eventually, open_call

pytestmark = pytest.mark.integration

TABLES = ("calls", "call_parties", "transfer_events", "summaries", "transfer_outcomes")


@pytest.fixture
async def db(postgres: LocalPostgres) -> AsyncIterator[Secret]:
    """The URL of a new, empty database for this test."""
    name = f"rec_{uuid.uuid4().hex[:12]}"
    dsn = await postgres.create_database(name)
    try:
        yield dsn
    finally:
        await postgres.drop_database(name)


@pytest.fixture
async def records(db: Secret) -> AsyncIterator[PostgresRecords]:
    """Open records on the test's database."""
    async with PostgresRecords(db) as store:
        yield store


async def _query(dsn: Secret, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn.get())
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _counts(dsn: Secret) -> dict[str, int]:
    conn = await asyncpg.connect(dsn.get())
    try:
        # Table names from the fixed tuple above.
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


async def _ids(store: PostgresRecords, identity: str, role: Any, **kw: Any) -> set[str]:
    page = await store.search_calls(identity=identity, role=role, limit=MAX_LIMIT, **kw)
    return {c.call_id for c in page.calls}


# ---- migrations ---------------------------------------------------------------------


async def test_migrations_apply_once_and_data_survive_reopening(db: Secret) -> None:
    async with PostgresRecords(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        await store.start_call("call-kept", call_id="kept", agent="agent-x")
    first = await _query(db, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in first] == list(range(1, SCHEMA_VERSION + 1))
    async with PostgresRecords(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        assert await _ids(store, "agent-x", "agent") == {"kept"}
    again = await _query(db, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
    assert again == first  # nothing re-applied


async def test_replicas_opening_at_once_migrate_once(db: Secret) -> None:
    stores = [PostgresRecords(db, max_connections=2) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        versions = await _query(db, "SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
        await asyncio.gather(
            *(s.start_call(f"call-r{i}", call_id=f"r{i}") for i, s in enumerate(stores))
        )
        assert (await _counts(db))["calls"] == 4
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_a_newer_schema_is_refused(db: Secret) -> None:
    async with PostgresRecords(db):
        pass
    conn = await asyncpg.connect(db.get())
    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", SCHEMA_VERSION + 1)
    await conn.close()
    with pytest.raises(HistoryError, match="newer"):
        await PostgresRecords(db).open()


# ---- rights -------------------------------------------------------------------------


async def _four_calls(store: PostgresRecords) -> None:
    """x1: X's; y1: Y's; y2: Y's, transferred to X; y3: Y's, transferred to Z."""
    await store.start_call("call-x1", call_id="x1", caller="c1", agent="agent-x")
    await store.start_call("call-y1", call_id="y1", caller="c2", agent="agent-y")
    await store.start_call("call-y2", call_id="y2", caller="c3")
    await store.add_participant("y2", "agent-y", "agent")
    await store.start_call("call-y3", call_id="y3", caller="c4", agent="agent-y")
    for call_id, b in (("y2", "agent-x"), ("y3", "agent-z")):
        await store.add_transfer_event(
            call_id, f"t-{call_id}", "preparing", from_agent="agent-y", to_agent=b
        )
    await store.add_summary("y1", SummaryCard(reason="Billing dispute", key_facts=("50% off",)))


async def test_agents_see_only_their_calls_supervisors_all(records: PostgresRecords) -> None:
    await _four_calls(records)
    assert await _ids(records, "agent-x", "agent") == {"x1", "y2"}
    assert await _ids(records, "agent-y", "agent") == {"y1", "y2", "y3"}
    assert await _ids(records, "agent-z", "agent") == {"y3"}
    assert await _ids(records, "nobody", "agent") == set()
    assert await _ids(records, "boss", "supervisor") == {"x1", "y1", "y2", "y3"}
    # Filters narrow what one may see; they never widen it.
    assert await _ids(records, "boss", "supervisor", agent="agent-x") == {"x1", "y2"}
    assert await _ids(records, "agent-x", "agent", agent="agent-y") == {"y2"}
    assert await _ids(records, "agent-x", "agent", text="billing") == set()
    assert await _ids(records, "agent-y", "agent", text="BILLING") == {"y1"}
    assert await _ids(records, "boss", "supervisor", text="c3") == {"y2"}
    # Opening: X may open its own and the one transferred to it, not Y's.
    dossier = await records.get_call("y2", identity="agent-x", role="agent")
    assert dossier.call.caller == "c3" and dossier.call.agent == "agent-y"
    assert ("agent-x", "to_agent") in dossier.parties
    assert [e.phase for e in dossier.transfers] == ["preparing"]
    with pytest.raises(NotFoundError) as hidden:
        await records.get_call("y1", identity="agent-x", role="agent")
    with pytest.raises(NotFoundError) as missing:
        await records.get_call("no-such-call", identity="agent-x", role="agent")
    assert hidden.value.message == missing.value.message  # the same answer
    sup = await records.get_call("y1", identity="boss", role="supervisor")
    assert sup.summaries[0].card.reason == "Billing dispute"
    # Only agents and supervisors read records.
    for role in ("caller", "service", ""):
        with pytest.raises(ValidationError):
            await records.search_calls(identity="c1", role=role)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await records.get_call("x1", identity="c1", role=role)  # type: ignore[arg-type]


# ---- hostile input ------------------------------------------------------------------


async def test_hostile_search_text_matches_literally_or_is_refused(
    records: PostgresRecords, db: Secret
) -> None:
    await _four_calls(records)
    before = await _counts(db)
    harmless = [
        "' OR '1'='1",
        "x'; DROP TABLE calls; --",
        '"; DELETE FROM call_parties; --',
        "$1",
        "\\",
        "\\%",
        "%%",
        "_",
        "ü€𝄞",
        "a" * MAX_SEARCH_TEXT,
        ") OR (1=1",
    ]
    for text in harmless:
        assert await _ids(records, "boss", "supervisor", text=text) == set(), text
        assert await _ids(records, "agent-x", "agent", text=text) == set(), text
    # Wildcards are literal: "%" finds the one summary that has one, not every call.
    assert await _ids(records, "boss", "supervisor", text="%") == {"y1"}
    assert await _ids(records, "boss", "supervisor", text="50% o") == {"y1"}
    refused = ["a" * (MAX_SEARCH_TEXT + 1), "x" * 1_000_000, "bill\x00ing", "\x00", "a\nb", "\x7f"]
    for text in refused:
        with pytest.raises(ValidationError) as info:
            await records.search_calls(identity="boss", role="supervisor", text=text)
        assert info.value.field == "text"
    for bad in ("x' OR '1'='1", "", "a" * 200, "a b", "\x00"):
        with pytest.raises(ValidationError):
            await records.search_calls(identity=bad, role="agent")
        with pytest.raises(ValidationError):
            await records.search_calls(identity="boss", role="supervisor", agent=bad)
        with pytest.raises((ValidationError, NotFoundError)):
            await records.get_call(bad, identity="boss", role="supervisor")
    assert await _counts(db) == before


async def test_bad_writes_change_nothing(records: PostgresRecords, db: Secret) -> None:
    await records.start_call("call-w", call_id="w", agent="agent-x")
    before = await _counts(db)
    bad_writes = [
        records.start_call("", call_id="w2"),
        records.start_call("room with spaces", call_id="w2"),
        records.start_call("call-w2", call_id="w2'; DROP TABLE calls; --"),
        records.start_call("call-w2", call_id="x" * 129),
        records.start_call("call-w2", call_id="w2", agent="agent x"),
        records.start_call("call-w2", call_id="w2", direction="in'bound"),
        records.start_call("call-w2", call_id="w2", started_at=math.nan),
        records.start_call("call-w2", call_id="w2", started_at=1e300),
        records.add_participant("w", "agent-y", "owner"),
        records.add_participant("w", "", "agent"),
        records.add_transfer_event("w", "t1", "teleporting"),
        records.add_transfer_event("w", "t 1", "preparing"),
        records.add_transfer_event("w", "t1", "preparing", to_agent="b'--"),
        records.add_transfer_event("w", "t1", "preparing", detail={"x": "y" * 70_000}),
        records.add_transfer_event("w", "t1", "preparing", detail={"x": math.inf}),
        records.add_transfer_event("w", "t1", "preparing", detail={"x": object()}),
        records.add_transfer_event("w", "t1", "preparing", at=-1.0),
        records.end_call("w'--"),
    ]
    for write in bad_writes:
        with pytest.raises(ValidationError):
            await write
    # An unknown call is refused (not retryable); the same call id for another room too.
    with pytest.raises(HistoryError) as unknown:
        await records.add_transfer_event("nope", "t1", "preparing")
    assert not unknown.value.retryable
    with pytest.raises(HistoryError):
        await records.add_summary("nope", SummaryCard(reason="x"))
    with pytest.raises(HistoryError):
        await records.add_participant("nope", "agent-y", "agent")
    with pytest.raises(HistoryError, match="another room"):
        await records.start_call("call-other", call_id="w")
    await records.end_call("nope")  # an unknown call's end is nothing to record
    assert await _counts(db) == before
    # A retry of the same start is no new call; the first end stands.
    assert await records.start_call("call-w", call_id="w", agent="agent-x") == "w"
    await records.end_call("w", ended_at=1000.0)
    await records.end_call("w", ended_at=2000.0)
    dossier = await records.get_call("w", identity="boss", role="supervisor")
    assert dossier.call.ended_at == 1000.0
    assert await _counts(db) == before
    # NUL characters in free text are kept out (PostgreSQL refuses them), the rest stored.
    await records.add_transfer_event(
        "w", "t1", "returned", detail={"reason": {"code": "declined", "text": "busy\x00now"}}
    )
    await records.add_summary("w", SummaryCard(reason="a\x00b"))
    dossier = await records.get_call("w", identity="agent-x", role="agent")
    assert dossier.transfers[-1].detail["reason"]["text"] == "busy\ufffdnow"
    assert dossier.summaries[-1].card.reason == "a\ufffdb"


async def test_paging_times_and_limits(records: PostgresRecords) -> None:
    base = 1_700_000_000.0
    # Pairs with equal times: the cursor must still not skip or repeat any.
    for i in range(25):
        await records.start_call(
            f"call-p{i}", call_id=f"p{i:02d}", agent="agent-p", started_at=base + i // 2
        )
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await records.search_calls(identity="agent-p", role="agent", limit=10, before=cursor)
        seen += [c.call_id for c in page.calls]
        pages += 1
        cursor = page.next_before
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted((f"p{i:02d}" for i in range(25)), reverse=True)
    window = await _ids(records, "boss", "supervisor", since=base + 2, until=base + 4)
    assert window == {"p04", "p05", "p06", "p07"}
    for limit in (0, -1, MAX_LIMIT + 1, 10**9, True, 2.5):
        with pytest.raises(ValidationError):
            await records.search_calls(identity="boss", role="supervisor", limit=limit)  # type: ignore[arg-type]
    for when in (math.nan, math.inf, -1.0, 1e20, "2024-01-01"):
        with pytest.raises(ValidationError):
            await records.search_calls(identity="boss", role="supervisor", since=when)  # type: ignore[arg-type]
    for cursor_text in ("", "abc", "1.", ".p01", "1.p01'--", "9" * 18 + ".p01", "1.p 01"):
        with pytest.raises(ValidationError):
            await records.search_calls(identity="boss", role="supervisor", before=cursor_text)


# ---- transfer outcomes ------------------------------------------------------------


async def test_a_transfer_outcome_is_recorded_once(records: PostgresRecords) -> None:
    await records.start_call("call-o", call_id="o", agent="agent-a")
    steps = [("preparing", 10.0), ("offering", 11.0), ("consulting", 12.0)]
    steps += [("completing", 13.0), ("completed", 14.0)]
    for phase, at in steps:
        await records.add_transfer_event(
            "o", "t-o", phase, from_agent="agent-a", to_agent="agent-b", at=at
        )
    # A late duplicate end (a retry, another replica) does not rewrite history.
    await records.add_transfer_event(
        "o", "t-o", "ended", from_agent="agent-a", detail={"reason": {"code": "network"}}, at=15.0
    )
    dossier = await records.get_call("o", identity="agent-b", role="agent")
    assert [o.__dict__ for o in dossier.outcomes] == [
        {
            "transfer_id": "t-o",
            "outcome": "completed",
            "reason": "",
            "from_agent": "agent-a",
            "to_agent": "agent-b",
            "started_at": 10.0,
            "ended_at": 14.0,
        }
    ]
    assert [e.phase for e in dossier.transfers] == [p for p, _ in steps] + ["ended"]


# ---- failures of the database ------------------------------------------------------


async def test_unreachable_or_refusing_database(postgres: LocalPostgres) -> None:
    password = postgres.password.get()
    wrong = f"postgresql://{postgres.user}:{password}x@{postgres.host}:{postgres.port}/softphone"
    closed = f"postgresql://{postgres.user}:{password}@127.0.0.1:1/softphone"
    missing = f"postgresql://{postgres.user}:{password}@{postgres.host}:{postgres.port}/nope"
    malformed = f"postgresql://{postgres.user}:{password}@h:port/db"
    expected = [(wrong, False), (closed, True), (missing, False), (malformed, False)]
    for dsn, retryable in expected:
        with pytest.raises(HistoryError) as info:
            await PostgresRecords(dsn).open()
        assert info.value.retryable is retryable, dsn
        assert password not in str(info.value) and info.value.__cause__ is None
        assert info.value.__context__ is None or password not in str(info.value.__context__)
    with pytest.raises(HistoryError, match="not open"):
        await PostgresRecords(postgres.dsn).start_call("call-z", call_id="z")


async def test_writes_fail_retryably_while_the_database_is_down_then_work(
    reachable_dir_pg: LocalPostgres,
) -> None:
    server = reachable_dir_pg
    async with PostgresRecords(server.dsn, max_connections=2) as store:
        await store.start_call("call-d", call_id="d", agent="agent-d")
        await server.stop(kill=True)  # a crash: no clean shutdown
        with pytest.raises(HistoryError) as info:
            await store.add_transfer_event("d", "t-d", "preparing", from_agent="agent-d")
        assert info.value.retryable
        await server.start()

        # The pool reconnects; the first attempt may still meet a dead connection.
        async def write() -> bool:
            try:
                await store.add_transfer_event("d", "t-d", "preparing", from_agent="agent-d")
            except HistoryError as exc:
                assert exc.retryable
                return False
            return True

        await eventually(write, timeout_s=30.0)
        dossier = await store.get_call("d", identity="agent-d", role="agent")
        assert dossier.call.room == "call-d" and dossier.transfers[0].phase == "preparing"


@pytest.fixture
async def reachable_dir_pg() -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL of the test's own (it is crashed and started again)."""
    async with LocalPostgres(fsync=False) as server:
        yield server


# ---- scale --------------------------------------------------------------------------


async def test_search_among_ten_thousand_calls(records: PostgresRecords, db: Secret) -> None:
    n = 10_000
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    calls = [
        (
            f"s{i:05d}",
            f"call-s{i}",
            f"caller-{i}",
            f"agent-{i % 50}",
            "",
            "inbound",
            base + dt.timedelta(seconds=i),
        )
        for i in range(n)
    ]
    parties = [(c[3], c[0], "agent", c[6]) for c in calls]
    conn = await asyncpg.connect(db.get())
    try:
        await conn.copy_records_to_table(
            "calls",
            records=calls,
            columns=["call_id", "room", "caller", "agent", "created_by", "direction", "created_at"],
        )
        await conn.copy_records_to_table(
            "call_parties", records=parties, columns=["identity", "call_id", "role", "since"]
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    for i in range(0, n, 100):
        await records.add_summary(f"s{i:05d}", SummaryCard(reason=f"topic {i % 7} refund"))
    # Custody writes: time per add_transfer_event (one transaction each).
    times = []
    for i in range(200):
        started = time.perf_counter()
        await records.add_transfer_event(
            f"s{i:05d}", f"t{i}", "preparing", from_agent=f"agent-{i % 50}", to_agent="agent-b"
        )
        times.append(time.perf_counter() - started)
    print(
        f"\nadd_transfer_event: median {statistics.median(times) * 1000:.2f} ms, "
        f"p95 {sorted(times)[int(len(times) * 0.95)] * 1000:.2f} ms (200 writes)"
    )
    queries: dict[str, dict[str, Any]] = {
        "supervisor, newest 50": {"identity": "boss", "role": "supervisor"},
        "supervisor, text in summaries": {
            "identity": "boss",
            "role": "supervisor",
            "text": "topic 3",
        },
        "supervisor, text without match": {"identity": "boss", "role": "supervisor", "text": "zzz"},
        "agent, own calls": {"identity": "agent-7", "role": "agent"},
        "agent, text": {"identity": "agent-7", "role": "agent", "text": "caller-99"},
        "supervisor, agent filter": {"identity": "boss", "role": "supervisor", "agent": "agent-7"},
    }
    results: dict[str, Any] = {}
    for label, kw in queries.items():
        await records.search_calls(**kw)  # warm the plan and the cache
        took = []
        for _ in range(10):
            started = time.perf_counter()
            results[label] = await records.search_calls(**kw)
            took.append(time.perf_counter() - started)
        print(f"search {label}: median {statistics.median(took) * 1000:.2f} ms")
    assert len(results["supervisor, newest 50"].calls) == 50
    assert results["supervisor, newest 50"].calls[0].call_id == f"s{n - 1:05d}"
    own = results["agent, own calls"].calls
    assert len(own) == 50 and all(c.agent == "agent-7" for c in own)
    assert {c.call_id for c in results["agent, text"].calls} == {
        f"s{i:05d}" for i in range(n) if i % 50 == 7 and "caller-99" in f"caller-{i}"
    }
    hits = results["supervisor, text in summaries"].calls
    assert hits and all(int(c.call_id[1:]) % 100 == 0 for c in hits)
    assert results["supervisor, text without match"].calls == []
    # B (to_agent of 200 transfers) now finds those calls and no others.
    assert len(await _ids(records, "agent-b", "agent")) == 200


# ---- the orchestrator writes its chain of custody here ------------------------------


async def test_a_real_transfer_leaves_its_chain_of_custody(
    records: PostgresRecords, livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> None:
    lobby = f"lobby-records-{uuid.uuid4().hex[:6]}"
    async with (
        embedded_service(
            livekit_server, minter, lobby=lobby, offer_timeout_s=10.0, history=records
        ) as env,
        open_call(env, prefix="records") as call,
    ):
        ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
        offer = await call.next_offer(timeout_s=30.0)
        await call.b_lobby.decline(offer.transfer_id, "in a meeting")
        await call.a_service.wait_for_phase(ticket.transfer_id, ["returned"], timeout_s=30.0)
        a, b = call.a.identity, call.b.identity

        async def outcome_recorded() -> bool:
            page = await records.search_calls(identity=b, role="agent")
            if not page.calls:
                return False
            got = await records.get_call(page.calls[0].call_id, identity=b, role="agent")
            return bool(got.outcomes)

        await eventually(outcome_recorded, timeout_s=30.0)
        page = await records.search_calls(identity=b, role="agent")
        assert len(page.calls) == 1 and page.calls[0].room == call.room
        dossier = await records.get_call(page.calls[0].call_id, identity=a, role="agent")
    phases = [e.phase for e in dossier.transfers]
    assert phases[0] == "preparing" and "offering" in phases and phases[-1] == "returned"
    assert {e.transfer_id for e in dossier.transfers} == {ticket.transfer_id}
    assert all(e.from_agent == a and e.to_agent == b for e in dossier.transfers)
    (outcome,) = dossier.outcomes
    assert (outcome.outcome, outcome.reason, outcome.from_agent, outcome.to_agent) == (
        "returned",
        "declined",
        a,
        b,
    )
    assert dossier.transfers[-1].detail["reason"]["text"] == "in a meeting"
    assert dossier.summaries, "the summary handed to B was not recorded"
    # An agent of neither side finds nothing.
    assert await _ids(records, "agent-stranger", "agent") == set()
    with pytest.raises(SoftphoneError):
        await records.get_call(dossier.call.call_id, identity="agent-stranger", role="agent")
