"""The history view finds a past call, shows it, and exports it as Markdown and JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.store.history import HistoryStore
from softphone.ui.views.history_view import HistoryView
from tests.ui.conftest import wait_until

pytestmark = pytest.mark.ui


def test_history_search_open_and_export(
    qtbot: Any, run_ui: Callable[..., Any], tmp_path: Path
) -> None:
    async def scenario() -> dict[str, Any]:
        async with HistoryStore(tmp_path / "h.sqlite3") as history:
            cid = await history.start_call("room-refund")
            await history.add_participant(cid, "caller-h", "caller")
            await history.add_segment(
                cid, TranscriptSegment("caller-h", 0.0, 2.0, "I was charged twice")
            )
            await history.add_summary(cid, SummaryCard(reason="double charge"))
            await history.add_transfer_event(
                cid, "t1", "completed", from_agent="agent-a", to_agent="agent-b"
            )
            other = await history.start_call("room-other")
            await history.end_call(other)
            errors: list[str] = []
            view = HistoryView(history=history, report=errors.append)
            qtbot.addWidget(view)
            view.show()
            view.search.setText("charged twice")
            view.refresh()
            await wait_until(lambda: view.calls.count() == 1, 10, "search result")
            view.calls.setCurrentRow(0)
            await wait_until(lambda: view.detail is not None, 10, "call opened")
            md = view.export(tmp_path / "call.md", "md").read_text()
            js = json.loads(view.export(tmp_path / "call.json", "json").read_text())
            return {
                "transcript": view.transcript.text.toPlainText(),
                "summary": view.summary.toPlainText(),
                "timeline": view.timeline.toPlainText(),
                "md": md,
                "json": js,
                "errors": errors,
            }

    r = run_ui(scenario(), 30)
    assert "I was charged twice" in r["transcript"]
    assert "double charge" in r["summary"]
    assert "agent-a → agent-b" in r["timeline"]
    assert "# Call in room-refund" in r["md"] and "I was charged twice" in r["md"]
    assert r["json"]["call"]["room"] == "room-refund"
    assert r["json"]["transfers"][0]["to_agent"] == "agent-b"
    assert r["json"]["summaries"][0]["reason"] == "double charge"
    assert r["errors"] == []
