"""Agent A's transfer controls: pick B, mode, start / complete / cancel, phase and timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from softphone.domain.identifiers import validate_identity
from softphone.domain.summary import SummaryCard
from softphone.domain.transfer import TransferSnapshot
from softphone.errors import ValidationError
from softphone.protocol import AgentEntry

ACTIVE = ("preparing", "offering", "consulting", "completing")
PHASE_TEXT = {
    "preparing": "Preparing the summary and the new room…",
    "offering": "Ringing the agent (caller on hold)…",
    "consulting": "Consulting with the agent (caller on hold)",
    "completing": "Handing the caller over…",
    "completed": "Transfer completed",
    "returned": "The call is back with you",
    "ended": "Transfer ended",
}
MODES = (
    ("warm", "Warm (consult first)"),
    ("warm_intro", "Warm with introduction"),
    ("direct", "Direct (summary, no consult)"),
    ("cold", "Cold (no summary)"),
)


class TransferPanel(QWidget):
    """Dumb about the service: it asks its owner through signals and shows snapshots.

    Signals:
        start_requested(str, str): target identity, mode.
        complete_requested(): A hands the caller over.
        cancel_requested(): A takes the call back.
    """

    start_requested = Signal(str, str)
    complete_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, *, own_identity: Callable[[], str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._own_identity = own_identity
        self.snapshot: TransferSnapshot | None = None
        self._failed_agents: set[str] = set()
        self._started_at: float | None = None
        self._setup_ui()
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._on_tick)

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Agents online (presence)"))
        self.directory = QListWidget()
        self.directory.setAccessibleName("Agent directory")
        self.directory.setMaximumHeight(130)
        self.directory.currentItemChanged.connect(self._on_directory_selected)
        self.directory.itemDoubleClicked.connect(lambda _i: self._on_start_clicked())
        lay.addWidget(self.directory)
        form = QFormLayout()
        self.target = QLineEdit()
        self.target.setPlaceholderText("agent identity, or pick from the list")
        self.target.setAccessibleName("Transfer to agent")
        lbl = QLabel("Transfer &to")
        lbl.setBuddy(self.target)
        form.addRow(lbl, self.target)
        self.mode = QComboBox()
        for value, text in MODES:
            self.mode.addItem(text, value)
        self.mode.setAccessibleName("Transfer mode")
        lbl = QLabel("M&ode")
        lbl.setBuddy(self.mode)
        form.addRow(lbl, self.mode)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start &transfer")
        self.start_btn.setObjectName("primary")
        self.start_btn.setAccessibleName("Start transfer")
        self.start_btn.clicked.connect(self._on_start_clicked)
        self.complete_btn = QPushButton("&Complete")
        self.complete_btn.setAccessibleName("Complete transfer")
        self.complete_btn.clicked.connect(self.complete_requested.emit)
        self.cancel_btn = QPushButton("Ca&ncel")
        self.cancel_btn.setAccessibleName("Cancel transfer")
        self.cancel_btn.clicked.connect(self.cancel_requested.emit)
        for b in (self.start_btn, self.complete_btn, self.cancel_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.phase = QLabel("No transfer")
        self.phase.setObjectName("phase")
        self.phase.setAccessibleName("Transfer phase")
        self.phase.setWordWrap(True)
        lay.addWidget(self.phase)
        self.reason = QLabel("")
        self.reason.setWordWrap(True)
        self.reason.setAccessibleName("Transfer result")
        lay.addWidget(self.reason)
        self.retry_btn = QPushButton("&Retry with another agent")
        self.retry_btn.setAccessibleName("Retry transfer with another agent")
        self.retry_btn.clicked.connect(self._on_retry_clicked)
        self.retry_btn.hide()
        lay.addWidget(self.retry_btn)
        lay.addStretch(1)
        self.set_in_call(False)

    # ---- state ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a transfer is under way."""
        return self.snapshot is not None and self.snapshot.phase in ACTIVE

    def set_in_call(self, in_call: bool) -> None:
        """Enable starting a transfer only while in a call."""
        self._in_call = in_call
        self._update_buttons()

    def _update_buttons(self) -> None:
        phase = self.snapshot.phase if self.snapshot else None
        self.start_btn.setEnabled(self._in_call and not self.active)
        self.complete_btn.setEnabled(phase in ("consulting", "offering", "completing"))
        self.cancel_btn.setEnabled(phase in ("preparing", "offering", "consulting"))

    def set_directory(self, agents: list[AgentEntry]) -> None:
        """Show the online agents (not oneself) with their presence."""
        current = self.directory.currentItem()
        keep = current.data(Qt.ItemDataRole.UserRole) if current else None
        self.directory.clear()
        for a in agents:
            if a.identity == self._own_identity():
                continue
            item = QListWidgetItem(f"{a.identity}  —  {a.presence}")
            item.setData(Qt.ItemDataRole.UserRole, a.identity)
            item.setData(Qt.ItemDataRole.UserRole + 1, a.presence)
            self.directory.addItem(item)
            if a.identity == keep:
                self.directory.setCurrentItem(item)

    def agents(self) -> list[tuple[str, str]]:
        """(identity, presence) of the agents listed."""
        out = []
        for i in range(self.directory.count()):
            item = self.directory.item(i)
            out.append(
                (
                    str(item.data(Qt.ItemDataRole.UserRole)),
                    str(item.data(Qt.ItemDataRole.UserRole + 1)),
                )
            )
        return out

    def show_snapshot(self, snap: TransferSnapshot) -> None:
        """Follow the transfer's phase, reason and timer."""
        self.snapshot = snap
        if snap.phase in ACTIVE:
            if self._started_at is None:
                self._started_at = time.monotonic()
                self._timer.start()
            self.reason.setText("")
            self.retry_btn.hide()
        else:
            self._timer.stop()
            self._started_at = None
            if snap.reason is not None:
                self._failed_agents.add(snap.to_agent)
                self.reason.setText(snap.reason.describe())
                self.retry_btn.show()
            elif snap.phase == "completed":
                self.reason.setText(f"The caller is now with {snap.to_agent}.")
        self._render_phase()
        self._update_buttons()

    def clear(self, note: str = "") -> None:
        """Show no transfer any more, with ``note`` saying why (e.g. this app left it)."""
        self.snapshot = None
        self._timer.stop()
        self._started_at = None
        self.retry_btn.hide()
        self.reason.setText(note)
        self._render_phase()
        self._update_buttons()

    def _render_phase(self) -> None:
        snap = self.snapshot
        if snap is None:
            self.phase.setText("No transfer")
            return
        text = PHASE_TEXT.get(snap.phase, snap.phase)
        if self._started_at is not None:
            m, s = divmod(int(time.monotonic() - self._started_at), 60)
            text += f"  ·  {m:02d}:{s:02d}"
        self.phase.setText(f"{text}  (to {snap.to_agent})")

    def summary_hint(self, card: SummaryCard | None) -> None:
        """Note on the panel that an edited summary will be sent."""
        self.start_btn.setToolTip("Sends the summary from the Summary tab" if card else "")

    # ---- slots ---------------------------------------------------------------------
    def _on_tick(self) -> None:
        self._render_phase()

    def _on_directory_selected(self, item: QListWidgetItem | None, _prev: Any) -> None:
        if item is not None:
            self.target.setText(str(item.data(Qt.ItemDataRole.UserRole)))

    def _on_start_clicked(self) -> None:
        target = self.target.text().strip()
        try:
            validate_identity(target, "transfer to")
            if target == self._own_identity():
                raise ValidationError("transfer to", "cannot transfer a call to yourself")
        except ValidationError as exc:
            self.reason.setText(exc.message)
            return
        self.reason.setText("")
        self.start_requested.emit(target, str(self.mode.currentData()))

    def _on_retry_clicked(self) -> None:
        """Pick the next available agent that has not failed, and start at once."""
        for identity, presence in self.agents():
            if identity not in self._failed_agents and presence == "available":
                self.target.setText(identity)
                break
        else:
            self.reason.setText("No other agent is available right now; pick one or type it.")
            return
        self._on_start_clicked()
