"""Call history: search, open a past call, export it as Markdown or JSON."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from softphone.store.history import CallDetail, HistoryStore
from softphone.ui.async_slot import Report, run_task
from softphone.ui.widgets.summary_card import SummaryCardView
from softphone.ui.widgets.transcript_view import TranscriptView


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def call_as_markdown(detail: CallDetail) -> str:
    """A past call as a Markdown document (transcript, summaries, transfer timeline)."""
    c = detail.call
    out = [
        f"# Call in {c.room}",
        "",
        f"- started: {_when(c.started_at)}",
        f"- ended: {_when(c.ended_at)}",
        f"- participants: {', '.join(f'{i} ({r})' for i, r in detail.participants) or '-'}",
        "",
        "## Transcript",
        "",
    ]
    out += [f"- **{s.speaker}** [{s.start_s:.1f}s]: {s.text}" for s in detail.segments] or ["-"]
    out += ["", "## Summaries", ""]
    for card in detail.summaries:
        out += [card.to_markdown(), ""]
    out += ["## Transfer timeline", ""]
    out += [
        f"- {_when(t.at)} {t.phase} {t.from_agent} → {t.to_agent}".rstrip()
        for t in detail.transfers
    ] or ["-"]
    return "\n".join(out) + "\n"


def call_as_json(detail: CallDetail) -> str:
    """A past call as JSON."""
    c = detail.call
    data = {
        "call": {"id": c.id, "room": c.room, "started_at": c.started_at, "ended_at": c.ended_at},
        "participants": [{"identity": i, "role": r} for i, r in detail.participants],
        "transcript": [s.to_dict() for s in detail.segments],
        "summaries": [card.to_dict() for card in detail.summaries],
        "transfers": [
            {
                "transfer_id": t.transfer_id,
                "at": t.at,
                "phase": t.phase,
                "from_agent": t.from_agent,
                "to_agent": t.to_agent,
                "detail": t.detail,
            }
            for t in detail.transfers
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


class HistoryView(QWidget):
    """Lists past calls; shows the chosen call's transcript, summary and transfers.

    Args:
        history: The profile's history store.
        report: Where errors go.
    """

    def __init__(
        self, *, history: HistoryStore, report: Report, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._history = history
        self._report = report
        self.detail: CallDetail | None = None
        self._setup_ui()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search room, participant or transcript text")
        self.search.setAccessibleName("Search history")
        self.search.returnPressed.connect(self.refresh)
        self.refresh_btn = QPushButton("&Refresh")
        self.refresh_btn.setAccessibleName("Refresh history")
        self.refresh_btn.clicked.connect(self.refresh)
        row.addWidget(self.search, 1)
        row.addWidget(self.refresh_btn)
        lay.addLayout(row)
        split = QSplitter()
        self.calls = QListWidget()
        self.calls.setAccessibleName("Past calls")
        self.calls.currentItemChanged.connect(self._on_call_selected)
        split.addWidget(self.calls)
        tabs = QTabWidget()
        self.transcript = TranscriptView()
        self.summary = SummaryCardView()
        self.timeline = QTextBrowser()
        self.timeline.setAccessibleName("Transfer timeline")
        tabs.addTab(self.transcript, "Transcript")
        tabs.addTab(self.summary, "Summary")
        tabs.addTab(self.timeline, "Transfers")
        split.addWidget(tabs)
        split.setSizes([220, 480])
        lay.addWidget(split, 1)
        row2 = QHBoxLayout()
        self.export_md = QPushButton("Export &Markdown…")
        self.export_md.setAccessibleName("Export call as Markdown")
        self.export_json = QPushButton("Export &JSON…")
        self.export_json.setAccessibleName("Export call as JSON")
        for b, fmt in ((self.export_md, "md"), (self.export_json, "json")):
            b.setEnabled(False)
            b.clicked.connect(lambda _c=False, fmt=fmt: self._on_export_clicked(fmt))
            row2.addWidget(b)
        row2.addStretch(1)
        lay.addLayout(row2)

    def refresh(self) -> None:
        """Reload the call list (with the search term)."""
        run_task(self._load(self.search.text().strip()), report=self._report, what="history")

    async def _load(self, term: str) -> None:
        calls = await self._history.list_calls(search=term)
        self.calls.clear()
        for c in calls:
            item = QListWidgetItem(f"{_when(c.started_at)}  {c.room}")
            item.setData(256, c.id)
            self.calls.addItem(item)

    def _on_call_selected(self, item: QListWidgetItem | None, _prev: object) -> None:
        if item is not None:
            run_task(self._open(str(item.data(256))), report=self._report, what="open call")

    async def _open(self, call_id: str) -> None:
        detail = await self._history.get_call(call_id)
        self.detail = detail
        self.transcript.set_segments(detail.segments)
        self.summary.set_card(detail.summaries[-1] if detail.summaries else None)
        self.timeline.setPlainText(
            "\n".join(
                f"{_when(t.at)}  {t.phase:<11} {t.from_agent} → {t.to_agent}"
                for t in detail.transfers
            )
            or "No transfers."
        )
        self.export_md.setEnabled(True)
        self.export_json.setEnabled(True)
        if not detail.segments:
            self.transcript.text.setPlaceholderText("No transcript stored for this call.")

    def export(self, path: Path, fmt: str) -> Path:
        """Write the open call to ``path`` as ``md`` or ``json``."""
        if self.detail is None:
            raise ValueError("no call is open")
        text = call_as_markdown(self.detail) if fmt == "md" else call_as_json(self.detail)
        path.write_text(text, encoding="utf-8")
        return path

    def _on_export_clicked(self, fmt: str) -> None:
        if self.detail is None:
            return
        suffix = "Markdown (*.md)" if fmt == "md" else "JSON (*.json)"
        name, _ = QFileDialog.getSaveFileName(
            self, "Export call", f"call-{self.detail.call.id[:8]}.{fmt}", suffix
        )
        if name:
            try:
                self.export(Path(name), fmt)
            except OSError as exc:
                self._report(f"Could not write the export: {exc.strerror}")
