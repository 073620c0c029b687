"""A timestamped, read-only log of events shown in a window."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_LINES = 2000


class EventLog(QPlainTextEdit):
    """Appends ``HH:MM:SS.mmm  kind  text`` lines; keeps the last ``MAX_LINES``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setAccessibleName("Event log")
        self.setObjectName("eventLog")

    def add(self, kind: str, text: str, at: float | None = None) -> None:
        """Append one event."""
        t = time.time() if at is None else at
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
        self.appendPlainText(f"{stamp}  {kind:<12} {text}")

    def lines(self) -> list[str]:
        """Every line shown."""
        return self.toPlainText().splitlines()
