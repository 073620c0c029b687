"""Join/leave, mute, devices, meters, participants and connection status of one call."""

from __future__ import annotations

import asyncio
import time
from typing import Any, get_args

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from softphone.client.call_controller import CallController
from softphone.config import Settings
from softphone.domain.identifiers import validate_room_name
from softphone.errors import ValidationError
from softphone.media.devices import DeviceSwitch
from softphone.media.processing import ProcessingOptions, options_from_settings
from softphone.media.session import Disconnected, ParticipantChange, RemoteAudio, SessionEvent
from softphone.ui.async_slot import Report, run_task
from softphone.ui.bridge import EventBridge
from softphone.ui.widgets.event_log import EventLog
from softphone.ui.widgets.level_meter import LevelMeter

# Every session event but room metadata and data, which other views handle.
SESSION_EVENTS = tuple(
    e for e in get_args(SessionEvent) if e not in ("room_metadata_changed", "data")
)
QUALITY = {0: "poor", 1: "good", 2: "excellent", 3: "lost"}


class CallPanel(QWidget):
    """The controls of the call leg of one window.

    Args:
        controller: The window's call controller.
        bridge: The window's event bridge.
        log: The window's event log.
        report: Where errors go (the window's message bar).
        room_editable: Whether the user may type the room (agents) or not.

    Signals:
        joined(str): The call leg joined a room.
        left(): The call leg is gone.
    """

    joined = Signal(str)
    left = Signal()

    def __init__(
        self,
        *,
        controller: CallController,
        bridge: EventBridge,
        log: EventLog,
        report: Report,
        room_editable: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self._bridge = bridge
        self._log = log
        self._report = report
        self._quality = ""
        self._end_expected = False
        self._joining: asyncio.Task[Any] | None = None
        # What _apply_processing last acted on: it runs on every meter tick and
        # only does work when the settings or the running processing changed.
        self._processing_settings: Settings | None = None
        self._processing_shown: ProcessingOptions | None = None
        self._setup_ui(room_editable)
        self._apply_processing()
        bridge.forwarded.connect(self._on_event)
        bridge.attach(
            "controller",
            controller,
            ("leg_opened", "leg_closed", "muted", "call_started", "call_ended"),
        )
        bridge.attach(
            "devices", controller.devices, ("device_switched", "devices_changed", "device_error")
        )
        self._meter_timer = QTimer(self)
        self._meter_timer.setInterval(100)  # 10 updates a second read as live, cost little
        self._meter_timer.timeout.connect(self._on_meter_tick)
        self._meter_timer.start()

    # ---- building -----------------------------------------------------------------
    def _setup_ui(self, room_editable: bool) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.status = QLabel("Not connected")
        self.status.setObjectName("connectionStatus")
        self.status.setAccessibleName("Connection status")
        lay.addWidget(self.status)

        row = QHBoxLayout()
        self.room_edit = QLineEdit(self.controller.context.settings.room)
        settings = self.controller.context.settings
        self.room_edit.setPlaceholderText(
            f"empty: call {settings.call_agent}"
            if self.controller.role == "caller"
            else "room name"
        )
        self.room_edit.setAccessibleName("Room")
        self.room_edit.setReadOnly(not room_editable)
        self.room_edit.returnPressed.connect(self._on_join_clicked)
        room_label = QLabel("&Room")
        room_label.setBuddy(self.room_edit)
        self.join_btn = QPushButton("&Join")
        self.join_btn.setAccessibleName("Join call")
        self.join_btn.setObjectName("primary")
        self.join_btn.clicked.connect(self._on_join_clicked)
        self.leave_btn = QPushButton("&Leave")
        self.leave_btn.setAccessibleName("Leave call")
        self.leave_btn.setObjectName("danger")
        self.leave_btn.setEnabled(False)
        self.leave_btn.clicked.connect(self._on_leave_clicked)
        row.addWidget(room_label)
        row.addWidget(self.room_edit, 1)
        row.addWidget(self.join_btn)
        row.addWidget(self.leave_btn)
        lay.addLayout(row)

        self.mute_btn = QPushButton("&Mute  (Ctrl+M)")
        self.mute_btn.setCheckable(True)
        self.mute_btn.setAccessibleName("Mute microphone")
        self.mute_btn.toggled.connect(self._on_mute_toggled)
        QShortcut(QKeySequence("Ctrl+M"), self, self.mute_btn.toggle)
        lay.addWidget(self.mute_btn)

        box = QGroupBox("Audio devices")
        form = QFormLayout(box)
        self.input_combo = QComboBox()
        self.input_combo.setAccessibleName("Microphone device")
        self.output_combo = QComboBox()
        self.output_combo.setAccessibleName("Speaker device")
        self.mic_meter = LevelMeter("Microphone level")
        self.spk_meter = LevelMeter("Speaker level")
        self.input_state = QLabel("")
        self.input_state.setAccessibleName("Microphone state")
        self.output_state = QLabel("")
        self.output_state.setAccessibleName("Speaker state")
        self.processing_state = QLabel("")
        self.processing_state.setAccessibleName("Audio processing")
        self.processing_state.setWordWrap(True)
        self.processing_state.setToolTip(
            "Echo cancellation, noise suppression, high-pass filter and automatic gain "
            "on the microphone; change them in Settings"
        )
        for label, w in (
            ("Micro&phone", self.input_combo),
            ("", self.input_state),
            ("Clean audio", self.processing_state),
            ("Input level", self.mic_meter),
            ("&Speaker", self.output_combo),
            ("", self.output_state),
            ("Output level", self.spk_meter),
        ):
            lbl = QLabel(label)
            lbl.setBuddy(w)
            form.addRow(lbl, w)
        self.input_combo.activated.connect(lambda _i: self._on_device_chosen("input"))
        self.output_combo.activated.connect(lambda _i: self._on_device_chosen("output"))
        lay.addWidget(box)

        lay.addWidget(QLabel("Participants"))
        self.participants = QListWidget()
        self.participants.setAccessibleName("Participants")
        self.participants.setMaximumHeight(110)
        lay.addWidget(self.participants)
        self.refresh_devices()

    # ---- state ---------------------------------------------------------------------
    @property
    def in_call(self) -> bool:
        """True while the call leg is up."""
        return self.controller.call is not None

    def refresh_devices(self) -> None:
        """Fill the device lists from what PortAudio sees now."""
        for combo, devices, kind in (
            (self.input_combo, self.controller.devices.inputs(), "input"),
            (self.output_combo, self.controller.devices.outputs(), "output"),
        ):
            chosen = self.controller.devices.chosen[kind]  # type: ignore[index]
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("System default", "")
            for d in devices:
                combo.addItem(d.name + ("  (default)" if d.default else ""), d.name)
            if chosen and combo.findData(chosen) < 0:
                combo.addItem(f"{chosen}  (not connected)", chosen)
            combo.setCurrentIndex(max(0, combo.findData(chosen)))
            combo.blockSignals(False)

    def _refresh_participants(self) -> None:
        self.participants.clear()
        call = self.controller.call
        if call is None:
            return
        self.participants.addItem(f"{self.controller.identity} (you)")
        for p in call.session.room.remote_participants.values():
            attrs = dict(p.attributes)
            role = attrs.get("role", "")
            presence = attrs.get("presence", "")
            if p.identity.startswith("hold-"):
                role, presence = "hold music", ""
            extra = ", ".join(x for x in (role, presence) if x)
            self.participants.addItem(f"{p.identity}" + (f"  ({extra})" if extra else ""))

    def _set_status(self, text: str) -> None:
        quality = f" · quality {self._quality}" if self._quality and self.in_call else ""
        self.status.setText(text + quality)

    # ---- slots ---------------------------------------------------------------------
    def _on_join_clicked(self) -> None:
        text = self.room_edit.text().strip()
        placing = not text and self.controller.role == "caller"
        try:
            room = "a new call" if placing else validate_room_name(text)
        except ValidationError as exc:
            self._report(exc.message)
            return
        self.join_btn.setEnabled(False)
        # Joining can take seconds on a bad network: Leave cancels it meanwhile.
        self.leave_btn.setEnabled(True)
        self.leave_btn.setText("Ca&ncel")
        self._set_status(f"Connecting to {room}…")
        # A caller with no room places a call (the service names its room).
        joining = self.controller.place_call() if placing else self.controller.join(room)
        task = run_task(joining, report=self._report, what="join")
        self._joining = task
        task.add_done_callback(lambda t: self._on_join_done(t.cancelled() or t.exception()))

    def _on_join_done(self, failed: Any) -> None:
        self._joining = None
        self.leave_btn.setText("&Leave")
        if failed:
            self.join_btn.setEnabled(True)
            self.leave_btn.setEnabled(False)
            self._set_status("Not connected")

    def _on_leave_clicked(self) -> None:
        self.leave_btn.setEnabled(False)
        if self._joining is not None and not self._joining.done():
            self._joining.cancel()
            self._log.add("room", "joining cancelled")
            return
        run_task(self.controller.leave(), report=self._report, what="leave")

    def _on_mute_toggled(self, muted: bool) -> None:
        self.controller.set_muted(muted)
        self.mute_btn.setText("Un&mute  (Ctrl+M)" if muted else "&Mute  (Ctrl+M)")
        self.mute_btn.setAccessibleName("Unmute microphone" if muted else "Mute microphone")

    def _on_device_chosen(self, kind: str) -> None:
        combo = self.input_combo if kind == "input" else self.output_combo
        run_task(
            self.controller.choose_device(kind, str(combo.currentData() or "")),  # type: ignore[arg-type]
            report=self._report,
            what="choose device",
        )

    def _apply_processing(self) -> None:
        """Run the processing the settings ask for, and say what runs."""
        settings = self.controller.context.settings  # replaced, never changed, on save
        devices = self.controller.devices
        if settings is not self._processing_settings:
            self._processing_settings = settings
            wanted = options_from_settings(settings)
            if wanted != devices.processing:
                devices.set_processing(wanted)
                self._log.add("mic", f"clean audio: {wanted.describe()}")
        running = devices.processing
        if running != self._processing_shown:
            self._processing_shown = running
            self.processing_state.setText(_processing_text(running))

    def _on_meter_tick(self) -> None:
        # Settings are saved by the settings dialog; the next tick applies them.
        self._apply_processing()
        if not self.isVisible():
            return
        mic = self.controller.devices.mic
        level = mic.levels.level if mic is not None and not self.controller.muted else 0.0
        self.mic_meter.set_level(level)
        self.spk_meter.set_level(self.controller.devices.speaker.levels.level)

    def _on_event(self, source: str, name: str, payload: Any) -> None:
        if source == "controller":
            self._on_controller_event(name, payload)
        elif source == "devices":
            self._on_device_event(name, payload)
        elif source == "call":
            self._on_session_event(name, payload)

    def _on_controller_event(self, name: str, payload: Any) -> None:
        if name == "leg_opened" and payload == "call":
            call = self.controller.call
            assert call is not None
            self._bridge.attach("call", call.session, SESSION_EVENTS)
            self.join_btn.setEnabled(False)
            self.leave_btn.setEnabled(True)
            self.room_edit.setText(call.room_name)
            self._end_expected = False
            self._set_status(f"Connected to {call.room_name}")
            self._log.add("room", f"joined {call.room_name}")
            self._refresh_participants()
            self.joined.emit(call.room_name)
        elif name == "leg_closed" and payload == "call":
            self._bridge.detach("call")
            self.join_btn.setEnabled(True)
            self.leave_btn.setEnabled(False)
            self._quality = ""
            self._set_status("Not connected")
            self._log.add("room", "left the call")
            self._refresh_participants()
            self.left.emit()
        elif name == "muted":
            self._log.add("mic", "muted" if payload else "unmuted")
            if self.mute_btn.isChecked() != bool(payload):
                self.mute_btn.setChecked(bool(payload))

    def _on_device_event(self, name: str, payload: Any) -> None:
        if name == "devices_changed":
            self.refresh_devices()
            self._log.add("device", "device list changed")
        elif name == "device_error":
            self._report(str(payload))
        elif name == "device_switched" and isinstance(payload, DeviceSwitch):
            label = self.input_state if payload.kind == "input" else self.output_state
            what = "microphone" if payload.kind == "input" else "speaker"
            if payload.name is None:
                label.setText(
                    f"No {what} found: "
                    + ("sending nothing" if payload.kind == "input" else "audio is not played")
                )
            elif payload.reason == "fallback":
                label.setText(f"Chosen {what} not available; using {payload.name}")
            else:
                label.setText(f"Using {payload.name}")
            self._log.add("device", f"{what}: {payload.name or 'none'} ({payload.reason})")

    def _on_session_event(self, name: str, payload: Any) -> None:
        if name in ("participant_joined", "participant_left", "participant_attributes_changed"):
            assert isinstance(payload, ParticipantChange)
            verb = {
                "participant_joined": "joined",
                "participant_left": "left",
                "participant_attributes_changed": "changed",
            }[name]
            self._log.add("participant", f"{payload.identity} {verb}")
            self._refresh_participants()
        elif name in ("remote_audio", "remote_audio_ended"):
            assert isinstance(payload, RemoteAudio)
            verb = "subscribed" if name == "remote_audio" else "ended"
            self._log.add("track", f"audio of {payload.identity} {verb}")
        elif name == "connection_quality":
            self._quality = QUALITY.get(int(payload), "unknown")
            call = self.controller.call
            if call is not None:
                self._set_status(f"Connected to {call.room_name}")
        elif name == "reconnecting":
            self._set_status("Reconnecting…")
            self._log.add("room", "reconnecting")
        elif name == "reconnected":
            call = self.controller.call
            self._set_status(f"Connected to {call.room_name if call else ''}")
            self._log.add("room", "reconnected")
        elif name == "disconnected":
            reason = payload.reason if isinstance(payload, Disconnected) else "unknown"
            self._log.add("room", f"disconnected ({reason})")
            if reason != "client":
                if not self._end_expected:
                    self._report(f"The call ended: disconnected ({reason}).")
                run_task(self.controller.leave(), report=self._report, what="leave")

    def expect_end(self) -> None:
        """The next removal from the room is expected (handed over), not an error."""
        self._end_expected = True

    def call_duration_s(self) -> float:
        """Seconds since the call started (0 when not in a call)."""
        started = self.controller.call_started_at
        return time.time() - started if started else 0.0

    def shutdown(self) -> None:
        """Stop timers and forwarding (the window is closing)."""
        self._meter_timer.stop()
        self._bridge.detach_all()


def _processing_text(options: ProcessingOptions) -> str:
    """What the call panel says about the microphone's processing."""
    if not options.any_on:
        return "Off: the microphone is sent as captured"
    return f"On: {options.describe()}"
