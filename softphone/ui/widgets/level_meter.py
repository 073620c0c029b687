"""A horizontal audio level meter."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QSizePolicy, QWidget


class LevelMeter(QWidget):
    """Shows a level in 0..1 as a bar, green to amber to red.

    Args:
        name: The accessible name (e.g. "Microphone level").
    """

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._level = 0.0
        self.setAccessibleName(name)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(10)
        # Square and fully painted: a repaint (ten a second while someone
        # talks) then touches this widget only, not the styled group box
        # behind it, which rounded, antialiased corners would expose.
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    @property
    def level(self) -> float:
        """The level shown, 0..1."""
        return self._level

    def set_level(self, level: float) -> None:
        """Show ``level`` (clamped to 0..1)."""
        level = min(1.0, max(0.0, level))
        if abs(level - self._level) > 0.005:
            self._level = level
            self.setAccessibleDescription(f"{round(level * 100)} percent")
            self.update()

    def sizeHint(self) -> QSize:
        return QSize(160, 12)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        r = self.rect()
        p.fillRect(r, self.palette().color(QPalette.ColorRole.AlternateBase))
        if self._level > 0:
            color = (
                QColor("#2e9d5b")
                if self._level < 0.75
                else QColor("#d99a1e")
                if self._level < 0.92
                else QColor("#d64545")
            )
            p.fillRect(QRect(r.x(), r.y(), round(r.width() * self._level), r.height()), color)
        p.end()
