"""Agent B's incoming offer: who, the summary card, the transcript; accept or decline."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from softphone.client.lobby import Offer
from softphone.ui.widgets.summary_card import SummaryCardView
from softphone.ui.widgets.transcript_view import TranscriptView

MODE_TEXT = {
    "warm": "warm transfer",
    "warm_intro": "warm transfer with introduction",
    "direct": "direct transfer",
    "cold": "cold transfer",
}


class OfferPanel(QWidget):
    """Shows one offer; the owner acts on the signals.

    Signals:
        accept_requested(object): the :class:`Offer`.
        decline_requested(object, str): the offer and the reason typed.
    """

    accept_requested = Signal(object)
    decline_requested = Signal(object, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.offer: Offer | None = None
        self._setup_ui()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        self.headline = QLabel("No incoming transfer.")
        self.headline.setObjectName("phase")
        self.headline.setWordWrap(True)
        self.headline.setAccessibleName("Incoming transfer")
        lay.addWidget(self.headline)
        # The card first and larger; the user may drag the transcript bigger.
        split = QSplitter(Qt.Orientation.Vertical)
        split.setChildrenCollapsible(False)
        self.summary = SummaryCardView()
        split.addWidget(self.summary)
        below = QWidget()
        below_lay = QVBoxLayout(below)
        below_lay.setContentsMargins(0, 0, 0, 0)
        self.transcript_label = QLabel("Transcript so far")
        below_lay.addWidget(self.transcript_label)
        self.transcript = TranscriptView()
        self.transcript.setAccessibleName("Transcript of the offered call")
        below_lay.addWidget(self.transcript, 1)
        split.addWidget(below)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay.addWidget(split, 1)
        row = QHBoxLayout()
        self.accept_btn = QPushButton("&Accept")
        self.accept_btn.setObjectName("primary")
        self.accept_btn.setAccessibleName("Accept transfer")
        self.accept_btn.clicked.connect(self._on_accept_clicked)
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("reason for declining (shown to the other agent)")
        self.reason.setAccessibleName("Decline reason")
        self.decline_btn = QPushButton("&Decline")
        self.decline_btn.setObjectName("danger")
        self.decline_btn.setAccessibleName("Decline transfer")
        self.decline_btn.clicked.connect(self._on_decline_clicked)
        row.addWidget(self.accept_btn)
        row.addWidget(self.reason, 1)
        row.addWidget(self.decline_btn)
        lay.addLayout(row)
        self.set_offer(None)

    def set_offer(self, offer: Offer | None, note: str = "") -> None:
        """Show ``offer`` (``None``: no offer, with an optional note why)."""
        self.offer = offer
        self.accept_btn.setEnabled(offer is not None)
        self.decline_btn.setEnabled(offer is not None)
        self.reason.setEnabled(offer is not None)
        if offer is None:
            self.headline.setText(note or "No incoming transfer.")
            self.summary.set_card(None)
            self.transcript.clear()
            self.transcript_label.setText("Transcript so far")
            return
        self.reason.clear()
        self.headline.setText(
            f"{offer.from_agent} offers you a {MODE_TEXT.get(offer.mode, offer.mode)} "
            f"of the call with {offer.caller}."
        )
        self.summary.set_card(offer.summary)
        if offer.summary is None:
            self.summary.setPlainText("No summary (cold transfer).")
        self.transcript.set_segments(list(offer.transcript))
        if not offer.transcript:
            self.transcript_label.setText("Transcript so far: nothing was transcribed")
        elif offer.transcript_omitted:
            self.transcript_label.setText(
                f"Transcript so far (latest part; {offer.transcript_omitted} earlier "
                "segments in the call's history)"
            )
        else:
            self.transcript_label.setText("Transcript so far")

    def _on_accept_clicked(self) -> None:
        if self.offer is not None:
            self.accept_requested.emit(self.offer)

    def _on_decline_clicked(self) -> None:
        if self.offer is not None:
            self.decline_requested.emit(self.offer, self.reason.text().strip())
