"""A live, per-speaker transcript with search and polite auto-scroll."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor, QTextDocument
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QTextBrowser, QVBoxLayout, QWidget

from softphone.domain.transcript import TranscriptSegment

_COLORS = ("#2563eb", "#b45309", "#047857", "#7c3aed", "#be123c", "#0e7490")


class TranscriptView(QWidget):
    """Shows transcript segments as ``[mm:ss] speaker: text`` lines.

    A partial segment is replaced by its final one (same ``segment_id``). The
    view follows new text unless the user scrolled up; the search box
    highlights and jumps to matches.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._segments: dict[str, TranscriptSegment] = {}
        self._order: list[str] = []
        self._speakers: dict[str, str] = {}
        self._setup_ui()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search transcript")
        self.search.setAccessibleName("Search transcript")
        self.search.returnPressed.connect(self._on_search_next)
        self.search.textChanged.connect(self._on_search_changed)
        self.matches = QLabel("")
        self.matches.setAccessibleName("Search matches")
        row.addWidget(self.search, 1)
        row.addWidget(self.matches)
        lay.addLayout(row)
        self.text = QTextBrowser()
        self.text.setAccessibleName("Transcript")
        self.text.setOpenLinks(False)
        lay.addWidget(self.text, 1)

    def segments(self) -> list[TranscriptSegment]:
        """The segments shown, in order."""
        return [self._segments[k] for k in self._order]

    def clear(self) -> None:
        """Remove every segment."""
        self._segments.clear()
        self._order.clear()
        self.text.clear()

    def set_segments(self, segments: list[TranscriptSegment]) -> None:
        """Show exactly ``segments``."""
        self.clear()
        for s in segments:
            self._store(s)
        self._render(follow=False)

    def add_segment(self, segment: TranscriptSegment) -> None:
        """Add a segment, or replace the partial with the same id."""
        self._store(segment)
        self._render(follow=self._at_bottom())

    def _store(self, s: TranscriptSegment) -> None:
        key = s.segment_id or f"{s.speaker}@{s.start_s:.3f}:{len(self._order)}"
        if key not in self._segments:
            self._order.append(key)
        self._segments[key] = s

    def _at_bottom(self) -> bool:
        bar = self.text.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4

    def _color(self, speaker: str) -> str:
        if speaker not in self._speakers:
            self._speakers[speaker] = _COLORS[len(self._speakers) % len(_COLORS)]
        return self._speakers[speaker]

    def _render(self, *, follow: bool) -> None:
        bar = self.text.verticalScrollBar()
        keep = bar.value()
        rows = []
        for s in self.segments():
            m, sec = divmod(int(s.start_s), 60)
            style = "" if s.final else " style='color:gray;font-style:italic'"
            leg = " <small>(consult)</small>" if s.leg == "consult" else ""
            rows.append(
                f"<p{style}><span style='color:gray'>[{m:02d}:{sec:02d}]</span> "
                f"<b style='color:{self._color(s.speaker)}'>{html.escape(s.speaker)}</b>{leg}: "
                f"{html.escape(s.text)}</p>"
            )
        self.text.setHtml("".join(rows))
        bar.setValue(bar.maximum() if follow else keep)

    def _on_search_changed(self, text: str) -> None:
        count = self.text.toPlainText().lower().count(text.lower()) if text else 0
        self.matches.setText(f"{count} found" if text else "")
        self.text.moveCursor(QTextCursor.MoveOperation.Start)
        if text:
            self.text.find(text)

    def _on_search_next(self) -> None:
        term = self.search.text()
        if term and not self.text.find(term):
            self.text.moveCursor(QTextCursor.MoveOperation.Start)
            self.text.find(term, QTextDocument.FindFlag(0))
        self.text.setFocus(Qt.FocusReason.OtherFocusReason)
