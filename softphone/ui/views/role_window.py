"""What every role's main window shares: message bar, event log, close handling."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QVBoxLayout, QWidget

from softphone.client.context import AppContext
from softphone.ui.bridge import EventBridge
from softphone.ui.widgets.event_log import EventLog
from softphone.ui.widgets.message_bar import MessageBar


class RoleWindow(QMainWindow):
    """Base of the caller, agent and supervisor windows.

    Subclasses build their content into ``self.body`` in ``_setup_ui`` and
    list what must be closed (controllers, services) in ``self.closables``;
    the app awaits their ``aclose()`` after ``closed`` is emitted.

    Signals:
        closed(): The user closed the window.
    """

    closed = Signal()

    def __init__(self, *, context: AppContext, title: str) -> None:
        super().__init__()
        self.context = context
        self.bridge = EventBridge(self)
        self.closables: list[object] = []
        self.setWindowTitle(f"{title} — {context.settings.effective_identity}")
        self.setObjectName(title.replace(" ", ""))
        central = QWidget()
        self._layout = QVBoxLayout(central)
        self.messages = MessageBar()
        self._layout.addWidget(self.messages)
        self.demo_note = QLabel()
        self.demo_note.setObjectName("demoNote")
        self.demo_note.setAccessibleName("Demo note")
        self.demo_note.setWordWrap(True)
        font = self.demo_note.font()
        font.setItalic(True)
        self.demo_note.setFont(font)
        self.demo_note.hide()
        self._layout.addWidget(self.demo_note)
        self.body = QVBoxLayout()
        self._layout.addLayout(self.body, 1)
        self.setCentralWidget(central)
        self.event_log = EventLog()
        dock = QDockWidget("Event log", self)
        dock.setObjectName("eventLogDock")
        dock.setWidget(self.event_log)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.log_dock = dock
        QShortcut(QKeySequence("Ctrl+L"), self, self.event_log.setFocus)

    def show_error(self, text: str) -> None:
        """Show an error in the window (non-modal) and in the event log."""
        self.messages.show_message(text, "error")
        self.event_log.add("error", text)

    def show_warning(self, text: str) -> None:
        """Show something the user must know, non-modal, until dismissed; and log it."""
        self.messages.show_message(text, "warning")
        self.event_log.add("warning", text)

    def show_info(self, text: str) -> None:
        """Show a notice that hides by itself."""
        self.messages.show_message(text, "info")
        self.event_log.add("info", text)

    def set_demo_note(self, text: str) -> None:
        """Say how the demo drives this window (empty: hide the note)."""
        self.demo_note.setText(text)
        self.demo_note.setVisible(bool(text))

    def closeEvent(self, event: QCloseEvent) -> None:
        self.bridge.detach_all()
        self.closed.emit()
        super().closeEvent(event)
