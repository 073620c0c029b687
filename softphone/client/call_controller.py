"""The call state behind a window, without Qt: devices, legs, mute, history.

Widgets call its coroutines through ``run_task`` and follow it through the
event bridge (its own events, its legs' sessions and its devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

from softphone.client.context import AppContext
from softphone.config import save_settings
from softphone.domain.events import EventEmitter
from softphone.domain.identifiers import validate_room_name
from softphone.errors import MediaError, SoftphoneError
from softphone.media.call_leg import CallLeg
from softphone.media.devices import AudioDevices, DeviceKind
from softphone.media.processing import options_from_settings
from softphone.media.session import RtcSession
from softphone.protocol import SupervisorMode, TokenRoleName

log = logging.getLogger(__name__)

ControllerEvent = Literal["leg_opened", "leg_closed", "muted", "call_started", "call_ended"]
LegName = Literal["call", "consult", "monitor"]


class CallController(EventEmitter[ControllerEvent]):
    """Joins and leaves rooms with one window's devices, and records calls.

    Args:
        context: The app's shared services.
        role: The role this window joins as.
    """

    def __init__(self, *, context: AppContext, role: TokenRoleName) -> None:
        super().__init__()
        self.context = context
        self.role = role
        self.devices = AudioDevices(
            input_device=context.settings.input_device,
            output_device=context.settings.output_device,
            processing=options_from_settings(context.settings),
        )
        self.legs: dict[str, CallLeg] = {}
        self.muted = False
        self.call_id: str | None = None
        # The service's id of the call this caller placed (ended when it leaves).
        self._placed: str | None = None
        self.call_started_at: float | None = None
        self._started: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def identity(self) -> str:
        """Who this window joins as."""
        return self.context.settings.effective_identity

    @property
    def call(self) -> CallLeg | None:
        """The call leg, when in a call."""
        return self.legs.get("call")

    async def start(self) -> None:
        """Open the audio devices (no devices at all is fine)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self.devices.start()
            except BaseException as exc:
                self._started.set_exception(exc)
                raise
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def join(
        self,
        room: str,
        *,
        leg: LegName = "call",
        publish: bool = True,
        supervisor_mode: SupervisorMode = "listen",
        token: str | None = None,
        url: str | None = None,
    ) -> CallLeg:
        """Join ``room`` as this window's ``leg`` (replacing a previous one).

        Raises:
            ValidationError: The room name is bad.
            MediaError: The room could not be joined.
        """
        validate_room_name(room)
        async with self._lock:
            current = self.legs.get(leg)
            if (
                leg == "call"
                and current is not None
                and current.room_name == room
                and current.session.connected
            ):
                return current  # asked twice (the Join button and a call.assigned command)
            await self.start()
            old = self.legs.pop(leg, None)
            if old is not None:
                await old.aclose()
                self.emit("leg_closed", leg)
            if token is None:
                token = await self.context.token(
                    role=self.role,
                    identity=self.identity,
                    room=room,
                    supervisor_mode=supervisor_mode,
                )

            async def fresh_token() -> str:
                # A rejoin after a long outage may find the first token expired.
                return await self.context.token(
                    role=self.role,
                    identity=self.identity,
                    room=room,
                    supervisor_mode=supervisor_mode,
                )

            call_leg = CallLeg(
                url=url or self.context.url,
                token=token,
                devices=self.devices,
                publish=publish,
                muted=self.muted,
                token_source=fresh_token,
            )
            try:
                await call_leg.connect()
            except BaseException:  # failed or cancelled by the user: leave nothing behind
                await asyncio.shield(call_leg.aclose())
                raise
            self.legs[leg] = call_leg
        self.emit("leg_opened", leg)
        if leg == "call":
            await self._record_start(room)
        return call_leg

    async def place_call(self) -> CallLeg:
        """A caller's call button: the service creates a call to the configured agent; join it.

        Raises:
            SoftphoneError: The service refused (e.g. this caller already has a call).
            MediaError: The room could not be joined.
        """
        ticket = await self.context.service().create_call(
            caller=self.identity,
            agent=self.context.settings.call_agent,
            requester=self.identity,
        )
        leg = await self.join(ticket.call.room, token=ticket.token.token)
        self._placed = ticket.call.call_id
        return leg

    async def adopt(
        self,
        leg: LegName,
        session: RtcSession,
        *,
        new_call: bool = False,
        keep_previous: bool = False,
    ) -> CallLeg:
        """Make a session a transfer helper connected this window's ``leg``.

        Args:
            leg: Which leg it becomes.
            session: The connected session (its mic is already published).
            new_call: Record it as a new call (B taking over a transfer).
            keep_previous: Keep playing the leg it replaces until that session
                disconnects (make-before-break: the helper leaves the old room
                once the new one is audible, and the user hears no gap).
        """
        await self.start()
        old = self.legs.pop(leg, None)
        if old is not None and old.session is session:
            old = None
        if old is not None and keep_previous:
            previous = f"{leg}-previous"
            stale = self.legs.pop(previous, None)
            if stale is not None:
                await stale.aclose()
            self.legs[previous] = old

            def release(_reason: object, old: CallLeg = old) -> None:
                if self.legs.get(previous) is old:
                    del self.legs[previous]
                    asyncio.get_running_loop().create_task(old.aclose())

            old.session.on("disconnected", release)
        elif old is not None:
            await old.aclose()
            self.emit("leg_closed", leg)
        call_leg = await CallLeg(devices=self.devices, session=session, muted=self.muted).adopt()
        self.legs[leg] = call_leg
        self.emit("leg_opened", leg)
        if leg == "call" and (new_call or self.call_id is None):
            await self._record_start(session.room_name)
        return call_leg

    async def drop(self, leg: LegName) -> None:
        """Forget a leg whose session a transfer helper closes (stop playing it)."""
        call_leg = self.legs.pop(leg, None)
        if call_leg is not None:
            await call_leg.aclose()
            self.emit("leg_closed", leg)

    async def leave(self, leg: LegName = "call") -> None:
        """Leave one leg (the call leg: also ends the call in the history)."""
        call_leg = self.legs.pop(leg, None)
        if call_leg is None:
            return
        await call_leg.aclose()
        self.emit("leg_closed", leg)
        if leg == "call":
            await self._record_end()
            placed, self._placed = self._placed, None
            if placed is not None:  # the caller hangs up: the call ends for everyone
                try:
                    await self.context.service().end_call(placed, identity=self.identity)
                except SoftphoneError as exc:
                    log.info("the service did not end the call", extra={"error": exc.message})

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute the microphone in every leg; a muted mic sends nothing."""
        self.muted = muted
        for call_leg in self.legs.values():
            call_leg.set_muted(muted)
        self.emit("muted", muted)

    async def choose_device(self, kind: DeviceKind, name: str) -> None:
        """Switch device and remember the choice in the profile."""
        await self.start()
        self.devices.choose(kind, name)
        key = "input_device" if kind == "input" else "output_device"
        self.context.settings = await asyncio.to_thread(
            save_settings, self.context.settings, {key: name}
        )

    async def _record_start(self, room: str) -> None:
        self.call_started_at = time.time()
        try:
            self.call_id = await self.context.history.start_call(room)
            await self.context.history.add_participant(self.call_id, self.identity, self.role)
        except Exception:
            # History is a record, never a reason to drop a call.
            log.warning("could not record the call start", exc_info=True)
        self.emit("call_started", room)

    async def _record_end(self) -> None:
        call_id, self.call_id = self.call_id, None
        self.call_started_at = None
        if call_id is not None:
            with contextlib.suppress(Exception):
                await self.context.history.end_call(call_id)
        self.emit("call_ended", call_id)

    async def aclose(self) -> None:
        """Leave every leg and close the devices."""
        for leg in list(self.legs):
            with contextlib.suppress(MediaError):
                await self.leave(leg)  # type: ignore[arg-type]
        if self._started is not None:
            await self.devices.aclose()
