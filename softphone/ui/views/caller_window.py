"""The caller's window: join, mute, devices, meters, hold banner; follows transfers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from PySide6.QtWidgets import QLabel

from softphone.client.call_controller import CallController
from softphone.client.caller_mover import CallerMover
from softphone.client.commands import CommandGuard
from softphone.client.context import AppContext
from softphone.client.legs import Moved
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import RtcSession
from softphone.ui.async_slot import run_task
from softphone.ui.views.call_panel import CallPanel
from softphone.ui.views.role_window import RoleWindow


class CallerWindow(RoleWindow):
    """A simple phone for the caller.

    Args:
        context: The app's shared services.
    """

    def __init__(self, *, context: AppContext) -> None:
        super().__init__(context=context, title="Caller")
        self.controller = CallController(context=context, role="caller")
        self.closables.append(self.controller)
        # Closed before the controller (closables close in reverse): a standby
        # connection, a room a move joined and the mover's timers go with the window.
        self.closables.append(SimpleNamespace(aclose=self._close_mover))
        self.mover: CallerMover | None = None
        self._guard: CommandGuard | None = None
        self._setup_ui()

    def _setup_ui(self) -> None:
        self.hold_banner = QLabel("You are on hold. Please stay on the line…")
        self.hold_banner.setObjectName("holdBanner")
        self.hold_banner.setAccessibleName("On hold")
        self.hold_banner.hide()
        self.body.addWidget(self.hold_banner)
        self.call_panel = CallPanel(
            controller=self.controller,
            bridge=self.bridge,
            log=self.event_log,
            report=self.show_error,
            room_editable=True,
        )
        # A room name is one long word: wrapped, the status never widens the window.
        self.call_panel.status.setWordWrap(True)
        self.body.addWidget(self.call_panel)
        self.body.addStretch(1)
        self.bridge.forwarded.connect(self._on_event)
        self.resize(460, 620)

    @property
    def on_hold(self) -> bool:
        """Whether the hold banner is shown."""
        return not self.hold_banner.isHidden()

    def set_on_hold(self, on_hold: bool) -> None:
        """Show or hide the hold banner."""
        if on_hold != self.on_hold:
            self.hold_banner.setVisible(on_hold)
            self.event_log.add("call", "on hold" if on_hold else "off hold")

    def _update_hold(self) -> None:
        # Hold audio comes from the agent's app (a track named "hold" only the
        # caller receives) or, for callers without an app, from the service (a
        # participant named hold-<id>).
        call = self.controller.call
        held = call is not None and (
            any(a.name == HOLD_TRACK for a in call.session.remote_tracks())
            or any(i.startswith("hold-") for i in call.session.remote_identities())
        )
        self.set_on_hold(held)

    def _on_event(self, source: str, name: str, payload: Any) -> None:
        if source == "controller" and name == "leg_opened" and payload == "call":
            call = self.controller.call
            assert call is not None
            if self.mover is None or self.mover.session is not call.session:
                if self._guard is not None:
                    self._follow(call.session, self._guard)
                else:
                    run_task(self._follow_when_known(call.session), report=self.show_error)
            self._update_hold()
        elif source == "controller" and name == "leg_closed" and payload == "call":
            self.set_on_hold(False)
        elif source == "call" and name in (
            "participant_joined",
            "participant_left",
            "remote_audio",
            "remote_audio_ended",
        ):
            self._update_hold()
        elif source == "mover" and name == "moved" and isinstance(payload, Moved):
            self.event_log.add("call", f"moved to {payload.room} (transfer)")
            self.show_info("You are now talking with the next agent.")

    async def _follow_when_known(self, session: RtcSession) -> None:
        # The service's key, asked for once: only what it signed moves the caller.
        transfer = self.context.transfer
        if transfer is None:
            return  # no service, so no transfers
        if self._guard is None:
            self._guard = CommandGuard(await transfer.service_info())
        call = self.controller.call
        if call is not None and call.session is session:
            self._follow(session, self._guard)

    def _follow(self, session: RtcSession, guard: CommandGuard) -> None:
        # Obey the service's standby and move instructions on this session.
        if self.mover is not None and self.mover.session is session:
            return
        mic = self.controller.devices.mic
        self.mover = CallerMover(session=session, mic=mic.source if mic else None, guard=guard)
        self.mover.on("joined", self._on_mover_joined)
        self.mover.on("moved", self._on_moved)

    async def _close_mover(self) -> None:
        mover, self.mover = self.mover, None
        if mover is not None:
            await mover.aclose()

    def _on_mover_joined(self, session: RtcSession) -> None:
        # Make-before-break: the mover joined the new room and publishes there;
        # play it now, and keep playing the old room until the mover leaves it.
        run_task(self.controller.adopt("call", session, keep_previous=True), report=self.show_error)

    def _on_moved(self, moved: Moved) -> None:
        self.bridge.forwarded.emit("mover", "moved", moved)
        call = self.controller.call
        if call is None or call.session is not moved.session:
            run_task(self.controller.adopt("call", moved.session), report=self.show_error)
