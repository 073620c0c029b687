"""The agent's window: call, presence, transcript, summary, transfer, offers, history."""

from __future__ import annotations

import asyncio
from typing import Any, cast, get_args

from PySide6.QtCore import Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from softphone.client.agent_controller import AgentController, AgentEvent, MediaGap, ServiceLost
from softphone.client.call_controller import CallController
from softphone.client.context import AppContext
from softphone.client.lobby import Offer, Withdrawn
from softphone.domain.transfer import EndReason, ReasonCode, TransferSnapshot
from softphone.errors import SoftphoneError, ValidationError
from softphone.protocol import PRESENCES, CallInfo
from softphone.ui.async_slot import run_task
from softphone.ui.views.call_panel import CallPanel
from softphone.ui.views.history_view import HistoryView
from softphone.ui.views.offer_panel import OfferPanel
from softphone.ui.views.role_window import RoleWindow
from softphone.ui.views.settings_dialog import SettingsDialog
from softphone.ui.views.transfer_panel import TransferPanel
from softphone.ui.widgets.summary_card import SummaryCardEditor
from softphone.ui.widgets.transcript_view import TranscriptView

# Narrower than this, the call panel goes above the tabs instead of beside them
# (three demo windows side by side on a 1366 px screen are about 500 px wide).
WIDE_MIN_W = 900


def scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a frameless scroll area: a small window scrolls it instead of growing."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


# Every event of the agent controller reaches the window through the bridge.
AGENT_EVENTS = get_args(AgentEvent)
REASON_CODES = get_args(ReasonCode)


def _sentence(text: str) -> str:
    """``text`` as a sentence: capital first letter, final full stop."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def withdrawn_text(withdrawn: Withdrawn) -> str:
    """What B's window says about an offer that went away: why, in words.

    The lobby's message says what happened; a typed reason from the service
    (``caller_left``, ``cancelled``, ...) adds its description, never its code.
    """
    message = withdrawn.message or "the offer was withdrawn"
    if withdrawn.reason in REASON_CODES:
        detail = EndReason(cast(ReasonCode, withdrawn.reason)).describe()
        if detail not in message:
            message = f"{message} ({detail})"
    return _sentence(message)


def lost_text(lost: ServiceLost) -> str:
    """What A's window says when its app walked away from a transfer the service lost."""
    return (
        f"{_sentence(lost.message)} The transfer was dropped and the caller is back with you"
        " in the call."
    )


def consult_lost_text(lost: ServiceLost) -> str:
    """What B's window says when it left a consult whose service stopped answering."""
    return (
        f"{_sentence(lost.message)} The transfer was dropped: the caller stays with the"
        " other agent, and you left the consult."
    )


def gap_text(gap: MediaGap) -> str:
    """The event-log line for a stretch of the call without audio."""
    where = " in the consult with the other agent" if gap.leg == "consult" else ""
    how = "rejoined the room" if gap.rejoined else "reconnected"
    return f"no audio for {gap.end_s - gap.start_s:.1f} s{where}: connection lost ({how})"


class AgentWindow(RoleWindow):
    """Everything an agent does during a call.

    Args:
        context: The app's shared services.
        title: Window title prefix (e.g. "Agent A" in the demo).
    """

    def __init__(self, *, context: AppContext, title: str = "Agent") -> None:
        super().__init__(context=context, title=title)
        self.controller = CallController(context=context, role="agent")
        self.agent = AgentController(calls=self.controller)
        self.closables += [self.controller, self.agent]
        self._summary_prepared = False
        # Transfers this app left (the service was lost): their late news is only logged.
        self._abandoned: set[str] = set()
        self._setup_ui()
        self.bridge.attach("agent", self.agent.events, AGENT_EVENTS)
        self.bridge.forwarded.connect(self._on_event)

    def _setup_ui(self) -> None:
        self.split = split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        left = QWidget()
        left_lay = QVBoxLayout(left)
        left_lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.presence = QComboBox()
        self.presence.addItems(list(PRESENCES))
        self.presence.setAccessibleName("Presence")
        self.presence.activated.connect(self._on_presence_chosen)
        lbl = QLabel("Pr&esence")
        lbl.setBuddy(self.presence)
        top.addWidget(lbl)
        top.addWidget(self.presence, 1)
        self.settings_btn = QPushButton("Se&ttings…")
        self.settings_btn.setAccessibleName("Open settings")
        self.settings_btn.clicked.connect(self._on_settings_clicked)
        top.addWidget(self.settings_btn)
        left_lay.addLayout(top)
        self.call_panel = CallPanel(
            controller=self.controller,
            bridge=self.bridge,
            log=self.event_log,
            report=self.show_error,
        )
        left_lay.addWidget(self.call_panel, 1)
        # A room name is one long word: wrapped, the status never widens the window.
        self.call_panel.status.setWordWrap(True)
        split.addWidget(scrolling(left))

        self.tabs = QTabWidget()
        self.transcript = TranscriptView()
        self.tabs.addTab(self.transcript, "Live &transcript")
        summary_box = QWidget()
        sl = QVBoxLayout(summary_box)
        self.summary_editor = SummaryCardEditor()
        self.draft_btn = QPushButton("&Draft summary from transcript")
        self.draft_btn.setAccessibleName("Draft summary from transcript")
        self.draft_btn.clicked.connect(self._on_draft_clicked)
        sl.addWidget(self.draft_btn)
        sl.addWidget(self.summary_editor, 1)
        self.tabs.addTab(scrolling(summary_box), "S&ummary")
        self.transfer_panel = TransferPanel(own_identity=lambda: self.controller.identity)
        self.transfer_panel.start_requested.connect(self._on_transfer_start)
        self.transfer_panel.complete_requested.connect(self._on_transfer_complete)
        self.transfer_panel.cancel_requested.connect(self._on_transfer_cancel)
        self.tabs.addTab(self.transfer_panel, "Trans&fer")
        self.offer_panel = OfferPanel()
        self.offer_panel.accept_requested.connect(self._on_offer_accept)
        self.offer_panel.decline_requested.connect(self._on_offer_decline)
        self.tabs.addTab(self.offer_panel, "&Incoming")
        self.history = HistoryView(history=self.context.history, report=self.show_error)
        self.tabs.addTab(self.history, "&History")
        split.addWidget(self.tabs)
        split.setSizes([380, 560])
        split.setStretchFactor(1, 1)
        self.body.addWidget(split, 1)
        self.call_panel.joined.connect(lambda _r: self.transfer_panel.set_in_call(True))
        self.call_panel.joined.connect(lambda _r: self._prepare_summaries())
        self.call_panel.left.connect(lambda: self.transfer_panel.set_in_call(False))
        if not self.agent.transfers_available:
            self.transfer_panel.setEnabled(False)
            self.transfer_panel.phase.setText(
                "Transfers need a transfer service (embedded or --backend)."
            )
        self.resize(980, 720)

    def resizeEvent(self, event: QResizeEvent) -> None:
        """Side by side when wide; the call panel above the tabs when narrow."""
        wide = event.size().width() >= WIDE_MIN_W
        orientation = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self.split.orientation() != orientation:
            self.split.setOrientation(orientation)
            if wide:
                self.split.setSizes([380, max(380, event.size().width() - 380)])
            else:
                self._give_tabs_room(2 / 5)
        super().resizeEvent(event)

    def _give_tabs_room(self, panel_share: float) -> None:
        """Stacked: the call panel gets at most ``panel_share`` of the height, the tabs the rest."""
        if self.split.orientation() != Qt.Orientation.Vertical:
            return
        total = sum(self.split.sizes()) or self.split.height()
        panel = min(self.call_panel.sizeHint().height() + 40, int(total * panel_share))
        self.split.setSizes([panel, max(1, total - panel)])

    def go_online(self) -> None:
        """Join the agent directory (lobby) so offers can reach this agent."""
        run_task(self.agent.go_online(), report=self.show_error, what="go online")

    # ---- slots ---------------------------------------------------------------------
    def _on_presence_chosen(self, _index: int) -> None:
        run_task(
            self.agent.set_presence(self.presence.currentText()),  # type: ignore[arg-type]
            report=self.show_error,
            what="presence",
        )

    def _on_settings_clicked(self) -> None:
        dialog = SettingsDialog(self.context.settings, self)
        if dialog.exec() and dialog.saved is not None:
            self.context.settings = dialog.saved
            self.show_info("Settings saved. Some changes apply at the next start.")

    def _prepare_summaries(self) -> None:
        """A call began: load the summarizer's NER model (its own process) before it is needed.

        Not at start-up: an idle agent keeps its memory; a call gives the
        model the seconds it needs before the transfer's summary or a draft.
        Started from a thread of its own: spawning it here held the window's
        loop 100-250 ms as the agent's first call began.
        """
        from softphone.speech.worker_start import prepare_entity_worker

        prepare_entity_worker()

    def _on_draft_clicked(self) -> None:
        run_task(self._draft_summary(), report=self.show_error, what="summary")

    async def _draft_summary(self) -> None:
        from softphone.speech.factory import make_offline_summarizer, make_summarizer
        from softphone.speech.summarizer import summarize_with_fallback

        self.draft_btn.setEnabled(False)
        self.draft_btn.setText("Summarizing…")
        try:
            card = await summarize_with_fallback(
                make_summarizer(self.context.settings),
                make_offline_summarizer(self.context.settings),
                [s for s in self.agent.segments if s.final],
            )
        finally:
            self.draft_btn.setEnabled(True)
            self.draft_btn.setText("&Draft summary from transcript")
        self.summary_editor.set_card(card)
        self._summary_prepared = True
        self.transfer_panel.summary_hint(card)

    def _on_transfer_start(self, target: str, mode: str) -> None:
        summary = None
        if self._summary_prepared and mode != "cold":
            try:
                summary = self.summary_editor.card()
            except ValidationError as exc:
                self.show_error(exc.message)
                return
        self.transfer_panel.start_btn.setEnabled(False)
        self.event_log.add("transfer", f"starting a {mode} transfer to {target}")
        task = run_task(
            self.agent.start_transfer(target, mode, summary),  # type: ignore[arg-type]
            report=self.show_error,
            what="start transfer",
        )
        task.add_done_callback(lambda _t: self.transfer_panel._update_buttons())

    def _on_transfer_complete(self) -> None:
        # The service removes A from the room as part of completing: not an error.
        self.call_panel.expect_end()
        run_task(self.agent.complete(), report=self.show_error, what="complete transfer")

    def _on_transfer_cancel(self) -> None:
        run_task(self.agent.cancel(), report=self.show_error, what="cancel transfer")

    def _on_offer_accept(self, offer: Offer) -> None:
        self.offer_panel.accept_btn.setEnabled(False)
        self.event_log.add("transfer", f"accepting the call from {offer.from_agent}")
        task = run_task(self.agent.accept(offer), report=self.show_error, what="accept")
        task.add_done_callback(lambda t: self._on_accept_done(offer, t))

    def _on_accept_done(self, offer: Offer, task: asyncio.Task[Any]) -> None:
        # A dropped offer already says why on the panel (offer_withdrawn): leave it.
        if task.cancelled() or self.offer_panel.offer is not offer:
            return
        self.offer_panel.set_offer(
            None, "" if task.exception() is not None else "Accepted: you are in the call."
        )

    def _on_offer_decline(self, offer: Offer, reason: str) -> None:
        self.event_log.add("transfer", f"declining the call from {offer.from_agent}")
        self.offer_panel.set_offer(None, "Declined.")
        run_task(self.agent.decline(offer, reason), report=self.show_error, what="decline")

    def _on_event(self, source: str, name: str, payload: Any) -> None:
        if source != "agent":
            return
        if name == "offer" and isinstance(payload, Offer):
            self.offer_panel.set_offer(payload)
            self.tabs.setCurrentWidget(self.offer_panel)
            self._give_tabs_room(1 / 5)  # the card and transcript matter more now
            self.event_log.add("transfer", f"offer from {payload.from_agent}")
            self.show_info(f"Incoming transfer from {payload.from_agent}")
        elif name == "offer_withdrawn" and isinstance(payload, Withdrawn):
            self._on_offer_withdrawn(payload)
        elif name == "directory":
            self.transfer_panel.set_directory(list(payload))
        elif name == "transfer" and isinstance(payload, TransferSnapshot):
            if payload.transfer_id in self._abandoned:
                # The service is back and tells of a transfer this app already left.
                self.event_log.add("transfer", f"{payload.phase} (a transfer already dropped)")
                return
            self.transfer_panel.show_snapshot(payload)
            self.event_log.add(
                "transfer",
                f"{payload.phase}" + (f" ({payload.reason.describe()})" if payload.reason else ""),
            )
            if payload.phase in ("completing", "completed"):
                self.call_panel.expect_end()
            if payload.phase in ("offering", "consulting"):
                self.tabs.setCurrentWidget(self.transfer_panel)
        elif name == "transfer_lost" and isinstance(payload, ServiceLost):
            self._on_transfer_lost(payload)
        elif name == "consult_lost" and isinstance(payload, ServiceLost):
            self.event_log.add("transfer", f"left the consult: {payload.message}")
            self.show_warning(consult_lost_text(payload))
        elif name == "media_gap" and isinstance(payload, MediaGap):
            self.event_log.add("connection", gap_text(payload))
        elif name == "segment":
            self.transcript.add_segment(payload)
        elif name == "transcript_error":
            message = payload.message if isinstance(payload, SoftphoneError) else str(payload)
            self.event_log.add("transcript", f"live transcript problem: {message}")
        elif name == "presence":
            self.presence.setCurrentText(str(payload))
            self.event_log.add("presence", str(payload))
        elif name == "lobby":
            self.event_log.add("lobby", "online in the agent directory")
        elif name == "call_assigned" and isinstance(payload, CallInfo):
            self.event_log.add("call", f"a call from {payload.caller} was assigned to you")

    def _on_offer_withdrawn(self, withdrawn: Withdrawn) -> None:
        text = withdrawn_text(withdrawn)
        shown = self.offer_panel.offer
        if shown is not None and shown.transfer_id == withdrawn.transfer_id:
            self.offer_panel.set_offer(None, text)
            self.show_info(text)
        self.event_log.add("transfer", f"offer dropped: {text}")

    def _on_transfer_lost(self, lost: ServiceLost) -> None:
        """A's app took the caller back by itself: say so where it is seen; ready to talk."""
        self._abandoned.add(lost.transfer_id)
        self.transfer_panel.clear(_sentence(f"{lost.message}: the transfer was dropped"))
        text = lost_text(lost)
        if self.controller.muted:
            # The caller is talking to A again: a mic left muted would be dead air.
            # Through the button, so the panel and the controller agree.
            self.call_panel.mute_btn.setChecked(False)
            text += " Your microphone is on."
        self.show_warning(text)
