"""The supervisor's window: live rooms, listen in silently, whisper to the agent, barge in."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from softphone.client.call_controller import CallController
from softphone.client.context import AppContext
from softphone.domain.events import EventEmitter
from softphone.errors import MediaError, SoftphoneError
from softphone.media.call_leg import CallLeg
from softphone.ui.async_slot import run_task
from softphone.ui.views.role_window import RoleWindow
from softphone.ui.widgets.level_meter import LevelMeter
from softphone.ui.widgets.transcript_view import TranscriptView

Mode = Literal["listen", "whisper", "barge"]


def agents_in(session: Any) -> list[str]:
    """Identities of the agents in a session's room (by their role attribute)."""
    return [
        p.identity
        for p in session.room.remote_participants.values()
        if dict(p.attributes).get("role") == "agent"
    ]


def allow_agents_only(session: Any) -> None:
    """Let only the room's agents subscribe to our tracks (the whisper)."""
    session.restrict_subscribers(agents_in(session))


class SupervisorController:
    """Monitoring without Qt: one ``monitor`` leg, switched between listen, whisper, barge.

    Args:
        calls: The window's call controller (role supervisor).
    """

    def __init__(self, *, calls: CallController) -> None:
        self.calls = calls
        self.context = calls.context
        self.mode: Mode | None = None
        self.room: str | None = None
        self.events: EventEmitter[Literal["segment", "transcript_error"]] = EventEmitter()
        self._live: Any | None = None
        self._offs: list[Callable[[], None]] = []

    async def _start_transcript(self, leg: CallLeg) -> None:
        """Transcribe the monitored room's speakers live (when the setting is on)."""
        from softphone.speech.live_transcriber import LiveTranscriber

        live = await LiveTranscriber.open(
            self.context.settings,
            on_segment=lambda seg: self.events.emit("segment", seg),
            on_error=lambda e: self.events.emit("transcript_error", e),
        )
        if live is None:
            return
        self._live = live
        self._offs.append(leg.session.each_remote_audio(live.add_remote))

    async def _stop_transcript(self) -> None:
        for off in self._offs:
            off()
        self._offs.clear()
        live, self._live = self._live, None
        if live is not None:
            await live.aclose()

    async def rooms(self) -> list[tuple[str, list[str], float]]:
        """Active calls (their rooms) with their parties and age in seconds.

        The service's registry answers: a supervisor sees every active call.
        """
        calls = await self.context.service().list_calls(
            identity=self.calls.identity, role="supervisor"
        )
        now = time.time()
        return sorted((c.room, [c.caller, c.agent], max(0.0, now - c.created_at)) for c in calls)

    async def monitor(self, room: str, mode: Mode) -> None:
        """Join ``room`` as listener (hidden, publishes nothing), whisperer or barger.

        A whisper reaches the agents only: the supervisor's track may be
        subscribed by the agents' identities and nobody else, set before
        publishing so the caller never gets it.

        Raises:
            MediaError: The room could not be joined or the mic not published.
        """
        await self._stop_transcript()  # also drops listeners of a previous monitor leg
        leg = await self.calls.join(room, leg="monitor", publish=False, supervisor_mode=mode)
        if mode == "whisper":
            agents = agents_in(leg.session)
            if not agents:
                await self.calls.leave("monitor")
                raise MediaError("there is no agent in this room to whisper to")
            allow_agents_only(leg.session)
            # An agent who joins later (e.g. B after a transfer) hears the whisper
            # too; everyone else's permission stays denied.
            self._offs.append(
                leg.session.on("participant_joined", lambda _p: allow_agents_only(leg.session))
            )
            self._offs.append(
                leg.session.on(
                    "participant_attributes_changed", lambda _p: allow_agents_only(leg.session)
                )
            )
        if mode in ("whisper", "barge"):
            await leg.publish_mic()
        self.mode, self.room = mode, room
        if self.context.settings.live_transcript:
            await self._start_transcript(leg)

    async def stop(self) -> None:
        """Leave the monitored room."""
        await self._stop_transcript()
        await self.calls.leave("monitor")
        self.mode = self.room = None

    async def aclose(self) -> None:
        """Stop the transcript (the call controller closes the leg)."""
        await self._stop_transcript()


class SupervisorWindow(RoleWindow):
    """Live rooms and monitoring controls.

    Args:
        context: The app's shared services.
        refresh_s: How often the room list refreshes.
    """

    def __init__(self, *, context: AppContext, refresh_s: float = 2.0) -> None:
        super().__init__(context=context, title="Supervisor")
        self.controller = CallController(context=context, role="supervisor")
        self.supervisor = SupervisorController(calls=self.controller)
        self.closables += [self.controller, self.supervisor]
        self._setup_ui()
        self.bridge.attach("supervisor", self.supervisor.events, ("segment", "transcript_error"))
        self.bridge.forwarded.connect(self._on_event)
        self._timer = QTimer(self)
        self._timer.setInterval(int(refresh_s * 1000))
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self._meter = QTimer(self)
        self._meter.setInterval(100)
        self._meter.timeout.connect(self._on_meter_tick)
        self._meter.start()
        self._refreshing = False

    def _setup_ui(self) -> None:
        self.status = QLabel("Not monitoring")
        self.status.setObjectName("connectionStatus")
        self.status.setAccessibleName("Monitoring status")
        self.body.addWidget(self.status)
        self.rooms = QTableWidget(0, 3)
        self.rooms.setHorizontalHeaderLabels(["Room", "Participants", "Duration"])
        self.rooms.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        # Room names are long and random: keep their start and end visible.
        self.rooms.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.rooms.setColumnWidth(0, 220)
        self.rooms.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.rooms.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.rooms.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rooms.setAccessibleName("Active rooms")
        self.body.addWidget(self.rooms, 1)
        row = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, text, name in (
            ("listen", "&Listen", "Listen in silently"),
            ("whisper", "&Whisper", "Whisper to the agent"),
            ("barge", "&Barge in", "Barge in"),
            ("leave", "L&eave", "Stop monitoring"),
        ):
            b = QPushButton(text)
            b.setAccessibleName(name)
            b.clicked.connect(lambda _c=False, key=key: self._on_action(key))
            row.addWidget(b)
            self.buttons[key] = b
        self.buttons["leave"].setObjectName("danger")
        self.buttons["leave"].setEnabled(False)
        row.addWidget(QLabel("Heard"))
        self.level = LevelMeter("Monitored audio level")
        row.addWidget(self.level, 1)
        self.body.addLayout(row)
        self.body.addWidget(QLabel("Live transcript of the monitored room"))
        self.transcript = TranscriptView()
        self.transcript.text.setPlaceholderText(
            "Where available: enable live transcript in settings."
        )
        col = QVBoxLayout()
        col.addWidget(self.transcript)
        self.body.addLayout(col, 1)
        self.resize(760, 640)

    def selected_room(self) -> str | None:
        """The room selected in the table."""
        row = self.rooms.currentRow()
        item = self.rooms.item(row, 0) if row >= 0 else None
        return item.text() if item else None

    def refresh(self) -> None:
        """Reload the room list."""
        if not self._refreshing:
            self._refreshing = True
            run_task(self._load(), report=self.show_error, what="rooms")

    async def _load(self) -> None:
        try:
            rooms = await self.supervisor.rooms()
        finally:
            self._refreshing = False
        keep = self.selected_room()
        self.rooms.setRowCount(len(rooms))
        for i, (name, people, age) in enumerate(rooms):
            m, s = divmod(int(age), 60)
            for col, text in enumerate((name, ", ".join(people), f"{m:02d}:{s:02d}")):
                self.rooms.setItem(i, col, QTableWidgetItem(text))
            if name == keep:
                self.rooms.selectRow(i)

    def _on_action(self, key: str) -> None:
        if key == "leave":
            run_task(self._stop(), report=self.show_error, what="leave")
            return
        room = self.selected_room() or self.supervisor.room
        if room is None:
            self.show_error("Select a room first.")
            return
        run_task(self._monitor(room, key), report=self.show_error, what=key)  # type: ignore[arg-type]

    async def _monitor(self, room: str, mode: Mode) -> None:
        self.status.setText(f"Joining {room}…")
        try:
            await self.supervisor.monitor(room, mode)
        except Exception:
            self.status.setText("Not monitoring")
            raise
        verb = {
            "listen": "Listening silently to",
            "whisper": "Whispering to the agent in",
            "barge": "Barged into",
        }[mode]
        self.status.setText(f"{verb} {room}")
        self.event_log.add("monitor", f"{mode} {room}")
        self.buttons["leave"].setEnabled(True)

    async def _stop(self) -> None:
        await self.supervisor.stop()
        self.status.setText("Not monitoring")
        self.event_log.add("monitor", "stopped")
        self.buttons["leave"].setEnabled(False)

    def _on_event(self, source: str, name: str, payload: Any) -> None:
        if source != "supervisor":
            return
        if name == "segment":
            self.transcript.add_segment(payload)
        elif name == "transcript_error":
            message = payload.message if isinstance(payload, SoftphoneError) else str(payload)
            self.event_log.add("transcript", f"live transcript problem: {message}")

    def _on_meter_tick(self) -> None:
        self.level.set_level(self.controller.devices.speaker.levels.level)

    def closeEvent(self, event: Any) -> None:
        self._timer.stop()
        self._meter.stop()
        super().closeEvent(event)
