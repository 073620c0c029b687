"""Light and dark themes and icons from ``resources/``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from softphone.config import Theme

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def icon(name: str) -> QIcon:
    """The icon ``resources/icons/<name>.svg`` (an empty icon if it is missing)."""
    path = RESOURCES / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


def apply_theme(app: QApplication, theme: Theme) -> None:
    """Apply the light or dark theme to the whole application."""
    app.setStyle("Fusion")
    palette = QPalette()
    if theme == "dark":
        for role, color in (
            (QPalette.ColorRole.Window, "#111827"),
            (QPalette.ColorRole.WindowText, "#e5e7eb"),
            (QPalette.ColorRole.Base, "#0f172a"),
            (QPalette.ColorRole.AlternateBase, "#1f2937"),
            (QPalette.ColorRole.Text, "#f3f4f6"),
            (QPalette.ColorRole.Button, "#374151"),
            (QPalette.ColorRole.ButtonText, "#f9fafb"),
            (QPalette.ColorRole.Highlight, "#2563eb"),
            (QPalette.ColorRole.HighlightedText, "#ffffff"),
            (QPalette.ColorRole.PlaceholderText, "#9ca3af"),
        ):
            palette.setColor(role, QColor(color))
    else:
        palette.setColor(QPalette.ColorRole.AlternateBase, QColor("#e5e7eb"))
    app.setPalette(palette)
    qss = RESOURCES / f"theme-{theme}.qss"
    app.setStyleSheet(qss.read_text(encoding="utf-8") if qss.is_file() else "")
    app.setWindowIcon(icon("app"))
