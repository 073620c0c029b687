"""The SQLite history store: concurrency, crash safety, migrations, round trips."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import HistoryError
from softphone.store.history import MIGRATIONS, SCHEMA_VERSION, HistoryStore

pytestmark = pytest.mark.integration


async def test_round_trip_of_a_call(tmp_path: Path) -> None:
    async with HistoryStore(tmp_path / "h.sqlite3") as store:
        cid = await store.start_call("room-1")
        await store.add_participant(cid, "caller", "caller")
        await store.add_participant(cid, "agent-a", "agent")
        await store.add_segment(
            cid,
            TranscriptSegment(
                "caller", 0.0, 1.5, "my order 12345 is late", segment_id="s1", final=False
            ),
        )
        await store.add_segment(
            cid, TranscriptSegment("caller", 0.0, 1.6, "My order 12345 is late.", segment_id="s1")
        )
        await store.add_segment(
            cid, TranscriptSegment("agent-a", 2.0, 3.0, "Let me check.", leg="call")
        )
        card = SummaryCard(reason="Late order", key_facts=("order 12345",), sentiment="negative")
        await store.add_summary(cid, card)
        await store.add_transfer_event(
            cid,
            "t1",
            "preparing",
            from_agent="agent-a",
            to_agent="agent-b",
            detail={"mode": "warm"},
        )
        await store.add_transfer_event(
            cid, "t1", "completed", from_agent="agent-a", to_agent="agent-b"
        )
        await store.add_recording(cid, "caller", tmp_path / "caller.wav")
        await store.end_call(cid)

        detail = await store.get_call(cid)
        assert detail.call.room == "room-1" and detail.call.ended_at is not None
        assert detail.participants == [("caller", "caller"), ("agent-a", "agent")]
        assert [s.text for s in detail.segments] == ["My order 12345 is late.", "Let me check."]
        assert detail.summaries == [card]
        assert [(t.phase, t.detail) for t in detail.transfers] == [
            ("preparing", {"mode": "warm"}),
            ("completed", {}),
        ]
        assert detail.recordings[0].path.endswith("caller.wav")

        assert [c.id for c in await store.list_calls(search="12345")] == [cid]
        assert [c.id for c in await store.list_calls(search="agent-a")] == [cid]
        assert await store.list_calls(search="nothing like this") == []
        with pytest.raises(HistoryError):
            await store.get_call("missing")
        with pytest.raises(HistoryError):
            await store.add_segment("missing", TranscriptSegment("x", 0, 1, "y"))


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    async with HistoryStore(path) as first, HistoryStore(path) as second:
        cid = await first.start_call("room-c")

        async def write(store: HistoryStore, who: str) -> None:
            for i in range(60):
                await store.add_segment(cid, TranscriptSegment(who, i, i + 0.5, f"{who} {i}"))

        await asyncio.gather(*(write(s, f"w{n}") for n, s in enumerate([first, second] * 3)))
        detail = await second.get_call(cid)
    assert len(detail.segments) == 6 * 60
    # Each writer's 60 segments are all there, in order.
    for n in range(6):
        texts = [s.text for s in detail.segments if s.speaker == f"w{n}"]
        assert texts == [f"w{n} {i}" for i in range(60)]


WRITER = """
import asyncio, sys
from pathlib import Path
from softphone.domain.transcript import TranscriptSegment
from softphone.store.history import HistoryStore

async def main():
    store = await HistoryStore(Path(sys.argv[1])).open()
    cid = await store.start_call("crash-room", call_id="crash")
    i = 0
    while True:
        await store.add_segment(cid, TranscriptSegment("caller", i, i + 1, f"line {i}"))
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


async def test_a_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    committed = -1
    while committed < 200:
        committed = int(await proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    async with HistoryStore(path) as store:
        detail = await store.get_call("crash")
    texts = {s.text for s in detail.segments}
    assert all(f"line {i}" in texts for i in range(committed + 1))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


async def test_an_older_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute("INSERT INTO calls (id, room, started_at) VALUES ('old', 'r-old', 1.0)")
    conn.execute(
        "INSERT INTO segments (call_id, speaker, start_s, end_s, text) VALUES ('old', 'caller', 0, 1, 'hello')"
    )
    conn.commit()
    conn.close()
    async with HistoryStore(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
        detail = await store.get_call("old")
        assert [(s.text, s.leg) for s in detail.segments] == [("hello", "call")]
        await store.add_summary("old", SummaryCard(reason="migrated"))
        assert (await store.get_call("old")).summaries[0].reason == "migrated"


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(HistoryError) as info:
        await HistoryStore(path).open()
    assert "newer" in info.value.message
