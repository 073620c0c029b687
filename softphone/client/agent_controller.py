"""Agent-side call logic without Qt: lobby and presence, transfers, offers, live transcript.

Wraps the transfer engine's client helpers (``AgentLobby``, ``AgentCall``)
and the speech engine's ``LiveTranscriber`` around the window's
:class:`CallController`, and re-emits what the window shows as typed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from softphone.client.agent_call import AgentCall
from softphone.client.call_controller import CallController
from softphone.client.commands import CommandGuard
from softphone.client.legs import Moved
from softphone.client.lobby import AgentLobby, Offer, Withdrawn
from softphone.client.transfer_watch import ServiceLost
from softphone.domain.events import EventEmitter
from softphone.domain.summary import SummaryCard
from softphone.domain.transcript import TranscriptSegment
from softphone.domain.transfer import Mode, TransferSnapshot
from softphone.errors import SoftphoneError, TransferError
from softphone.media.hold import HOLD_TRACK
from softphone.media.session import Reconnected, RemoteAudio, RtcSession
from softphone.protocol import CallInfo, Presence

log = logging.getLogger(__name__)

AgentEvent = Literal[
    "offer",
    "offer_withdrawn",
    "directory",
    "transfer",
    "segment",
    "transcript_error",
    "presence",
    "lobby",
    "call_assigned",
    "transfer_lost",
    "consult_lost",
    "media_gap",
]
# How long the live transcript waits for its call's history entry.
CALL_ID_WAIT_S = 5.0
# The speaker of the marker segments that note a gap in the call's audio.
GAP_SPEAKER = "(connection)"


@dataclasses.dataclass(frozen=True)
class MediaGap:
    """A stretch of the call without audio: the connection to the media server was lost.

    Attributes:
        leg: ``call`` or ``consult``.
        start_s: Seconds since the call began when the audio stopped.
        end_s: When it came back.
        rejoined: The app joined the room afresh (e.g. the server restarted).
    """

    leg: str
    start_s: float
    end_s: float
    rejoined: bool

    def marker(self, n: int) -> TranscriptSegment:
        """The marker segment that notes this gap in the transcript and the history."""
        return TranscriptSegment(
            speaker=GAP_SPEAKER,
            start_s=round(self.start_s, 2),
            end_s=round(self.end_s, 2),
            text=f"[no audio for {self.end_s - self.start_s:.1f} s: connection lost]",
            final=True,
            leg=self.leg,
            segment_id=f"gap-{n}",
        )


class AgentController:
    """Everything an agent window does beyond the call leg itself.

    Args:
        calls: The window's call controller.
    """

    def __init__(self, *, calls: CallController) -> None:
        self.events: EventEmitter[AgentEvent] = EventEmitter()
        self.calls = calls
        self.context = calls.context
        self.lobby: AgentLobby | None = None
        self.agent_call: AgentCall | None = None
        self._guard: CommandGuard | None = None
        self.live: Any | None = None
        self.segments: list[TranscriptSegment] = []
        self.last_snapshot: TransferSnapshot | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.recorder: Any | None = None
        self.consult_recorder: Any | None = None
        self._recording_offs: list[Callable[[], None]] = []
        self._consult_offs: list[Callable[[], None]] = []
        self._leg_offs: dict[str, list[Callable[[], None]]] = {}
        self._gaps = itertools.count(1)
        self.gaps: list[MediaGap] = []
        self._offs = [
            calls.on("leg_opened", self._on_leg_opened),
            calls.on("leg_closed", self._on_leg_closed),
            calls.on("call_started", lambda _room: self._spawn(self._start_recording())),
            calls.on("call_ended", lambda _cid: self._spawn(self._stop_recording())),
        ]
        if self.context.transfer is not None:
            self._offs.append(self.context.transfer.on("transfer_changed", self._on_service_event))
        from softphone.media.recording import writer_pool

        writer_pool()  # the recordings' thread starts now, not as the first call begins

    def _on_call_assigned(self, call: CallInfo) -> None:
        """The service assigned a call to this agent: take it unless busy with another."""
        self.events.emit("call_assigned", call)
        if self.calls.call is None:
            self._spawn(self.calls.join(call.room))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("agent background task failed", exc_info=t.exception())

        task.add_done_callback(done)

    async def command_guard(self) -> CommandGuard:
        """The gate for the service's commands (asks the service for its key once).

        Raises:
            TransferError: No transfer service is configured.
            SoftphoneError: The service could not be reached.
        """
        if self._guard is None:
            self._guard = CommandGuard(await self._service().service_info())
        return self._guard

    @property
    def transfers_available(self) -> bool:
        """Whether a transfer service is configured."""
        return self.context.transfer is not None

    # ---- lobby -----------------------------------------------------------------------
    async def go_online(self, presence: Presence = "available") -> None:
        """Join the lobby (the agent directory) so offers reach this agent.

        Raises:
            MediaError: The lobby could not be joined.
        """
        if self.context.transfer is None or self.lobby is not None:
            return
        await self.calls.start()
        settings = self.context.settings
        token = await self.context.token(
            role="agent", identity=self.calls.identity, room=settings.lobby_room
        )
        mic = self.calls.devices.mic
        lobby = AgentLobby(
            lobby_token=token,
            url=self.context.url,
            service=self.context.transfer,
            guard=await self.command_guard(),
            mic=mic.source if mic else None,
            presence=presence,
        )
        lobby.on("offer", lambda o: self.events.emit("offer", o))
        lobby.on("offer_withdrawn", lambda w: self.events.emit("offer_withdrawn", w))
        lobby.on("directory_changed", lambda _p: self.events.emit("directory", lobby.directory()))
        lobby.on("moved", self._on_lobby_moved)
        lobby.on("call_assigned", self._on_call_assigned)
        lobby.on("consult_lost", self._on_consult_lost)
        await lobby.start()
        self.lobby = lobby
        self.events.emit("lobby", True)
        self.events.emit("directory", lobby.directory())
        self.events.emit("presence", presence)

    async def set_presence(self, presence: Presence) -> None:
        """Publish available / busy / away."""
        if self.lobby is None:
            await self.go_online(presence)
            return
        await self.lobby.set_presence(presence)
        self.events.emit("presence", presence)

    # ---- offers (agent B) ------------------------------------------------------------
    async def accept(self, offer: Offer) -> None:
        """Accept an offer: join the transfer room as this window's call."""
        if self.lobby is None:
            raise TransferError("not online: no offer can be accepted")
        if self.calls.call is not None:
            await self.calls.leave()
        session = await self.lobby.accept(offer.transfer_id)
        await self.calls.adopt("call", session, new_call=True)
        if offer.summary is not None and self.calls.call_id:
            with contextlib.suppress(SoftphoneError):
                await self.context.history.add_summary(self.calls.call_id, offer.summary)

    async def decline(self, offer: Offer, reason: str) -> None:
        """Decline an offer with a reason A will see."""
        if self.lobby is None:
            raise TransferError("not online: no offer can be declined")
        await self.lobby.decline(offer.transfer_id, reason)

    def _on_consult_lost(self, lost: ServiceLost) -> None:
        """B's side of a lost service: A went back to the caller and B's lobby left R2."""
        log.warning("left the consult: %s", lost.message)
        if self.calls.call is not None:
            self._spawn(self.calls.leave())
        self.events.emit("consult_lost", lost)

    def _on_lobby_moved(self, moved: Moved) -> None:
        # Bring-the-agent: we now talk in the caller's room.
        self._spawn(self.calls.adopt("call", moved.session))

    # ---- transfers (agent A) ---------------------------------------------------------
    def caller_identity(self) -> str | None:
        """The caller in the call room (the first participant whose role is caller)."""
        call = self.calls.call
        if call is None:
            return None
        for p in call.session.room.remote_participants.values():
            if dict(p.attributes).get("role") == "caller":
                return p.identity
        return None

    async def start_transfer(
        self, to_agent: str, mode: Mode, summary: SummaryCard | None = None
    ) -> TransferSnapshot:
        """Start a transfer of this call to ``to_agent``.

        Raises:
            TransferError: Not in a call, no caller, or no transfer service.
            ValidationError: Bad target or mode.
        """
        call = self.calls.call
        if self.agent_call is None and call is not None and self.context.transfer is not None:
            await self._attach_call(call.session)  # the service's key was still on its way
        if self.agent_call is None:
            raise TransferError("transfers need a call and a transfer service")
        caller = self.caller_identity()
        if caller is None:
            raise TransferError("there is no caller in this call to transfer")
        ticket = await self.agent_call.transfer(
            caller=caller,
            to_agent=to_agent,
            mode=mode,
            transcript=tuple(s for s in self.segments if s.final),
            summary=summary,
        )
        return ticket.transfer

    async def complete(self) -> None:
        """Hand the caller over to B."""
        snap = self._require_snapshot()
        self._on_transfer_changed(
            await self._service().complete(snap.transfer_id, agent=self.calls.identity)
        )

    async def cancel(self) -> None:
        """Take the call back."""
        snap = self._require_snapshot()
        self._on_transfer_changed(
            await self._service().cancel(snap.transfer_id, agent=self.calls.identity)
        )

    def _service(self) -> Any:
        if self.context.transfer is None:
            raise TransferError("no transfer service is configured")
        return self.context.transfer

    def _require_snapshot(self) -> TransferSnapshot:
        if self.last_snapshot is None:
            raise TransferError("no transfer is under way")
        return self.last_snapshot

    def _on_service_event(self, snap: TransferSnapshot) -> None:
        # The service's own events reach us even after we left R1 (where the
        # status data messages arrive); only our transfer matters.
        if snap.from_agent == self.calls.identity and (
            self.last_snapshot is None or snap.transfer_id == self.last_snapshot.transfer_id
        ):
            self._on_transfer_changed(snap)

    def _on_transfer_changed(self, snap: TransferSnapshot) -> None:
        last = self.last_snapshot
        if (
            last is not None
            and last.transfer_id == snap.transfer_id
            and last.version >= snap.version
        ):
            return
        self.last_snapshot = snap
        self.events.emit("transfer", snap)
        if snap.from_agent != self.calls.identity:
            return
        if snap.phase == "completed":
            # Handed over: A leaves both legs and is free for the next call.
            self._spawn(self.calls.leave("consult"))
            self._spawn(self.calls.leave())
            if self.lobby is not None:
                self._spawn(self.lobby.set_presence("available"))
        elif snap.phase in ("returned", "ended"):
            self._spawn(self.calls.leave("consult"))
            call = self.calls.call
            if call is not None:  # the caller is back: A's mic goes to R1 again
                call.session.set_muted(self.calls.muted)

    # ---- legs ------------------------------------------------------------------------
    def _on_leg_opened(self, leg: str) -> None:
        opened = self.calls.legs.get(leg)
        if opened is not None and leg in ("call", "consult"):
            self._watch_gaps(leg, opened.session)
        if leg == "consult":
            self._spawn(self._start_consult_capture())
            return
        call = self.calls.call
        if leg != "call" or call is None:
            return
        if self.context.transfer is not None:
            if self._guard is not None:
                self._set_agent_call(call.session, self._guard)
            else:
                self._spawn(self._attach_call(call.session))
        if self.context.settings.live_transcript and self.live is None:
            self._spawn(self._start_transcript())

    async def _attach_call(self, session: RtcSession) -> None:
        guard = await self.command_guard()
        call = self.calls.call
        if self.agent_call is None and call is not None and call.session is session:
            self._set_agent_call(session, guard)

    def _set_agent_call(self, session: RtcSession, guard: CommandGuard) -> None:
        mic = self.calls.devices.mic
        agent_call = AgentCall(
            session=session,
            mic=mic.source if mic else None,
            service=self._service(),
            guard=guard,
        )
        agent_call.on("transfer_changed", self._on_transfer_changed)
        agent_call.on("consult_joined", lambda s: self._spawn(self.calls.adopt("consult", s)))
        agent_call.on("consult_left", lambda _p: self._spawn(self.calls.drop("consult")))
        agent_call.on("transfer_lost", self._on_transfer_lost)
        self.agent_call = agent_call

    def _on_transfer_lost(self, lost: ServiceLost) -> None:
        """The service went away mid-transfer and A's app went back to the caller by itself."""
        log.warning("back with the caller: %s", lost.message)
        self._spawn(self.calls.drop("consult"))
        call = self.calls.call
        if call is not None:
            call.session.set_muted(self.calls.muted)
        # The next transfer may start at once; this one is over for this app.
        self.last_snapshot = None
        self.events.emit("transfer_lost", lost)

    def _timeline_s(self) -> float:
        """Seconds since the call began (the transcript's timeline)."""
        if self.live is not None:
            return float(self.live.now_s())
        started = self.calls.call_started_at
        return time.time() - started if started else 0.0

    def _watch_gaps(self, leg: str, session: RtcSession) -> None:
        """Mark in the call's timeline where a leg's audio was lost (recording and
        transcript go on by themselves: a rejoin brings new tracks, and both
        continue each speaker's file and timeline from them)."""
        for off in self._leg_offs.pop(leg, []):
            off()

        def back(info: Reconnected | None) -> None:
            if info is None:
                return
            end_s = self._timeline_s()
            gap = MediaGap(leg, max(0.0, end_s - info.gap_s), end_s, info.rejoined)
            self.gaps.append(gap)
            self.events.emit("media_gap", gap)
            marker = gap.marker(next(self._gaps))
            self.events.emit("segment", marker)
            if self.calls.call_id:
                self._spawn(self._store_marker(self.calls.call_id, marker))

        self._leg_offs[leg] = [session.on("reconnected", back)]

    async def _store_marker(self, call_id: str, marker: TranscriptSegment) -> None:
        try:
            await self.context.history.add_segment(call_id, marker)
        except SoftphoneError as exc:
            log.warning("gap marker not stored", extra={"error": exc.message})

    def _on_leg_closed(self, leg: str) -> None:
        for off in self._leg_offs.pop(leg, []):
            off()
        if leg == "consult":
            self._spawn(self._stop_consult_capture())
            return
        if leg != "call":
            return
        agent_call, self.agent_call = self.agent_call, None
        if agent_call is not None:
            self._spawn(agent_call.aclose())
        if self.lobby is not None and self.lobby.call_session is not None:
            self._spawn(self.lobby.leave_call())
        live, self.live = self.live, None
        if live is not None:
            self._spawn(live.aclose())

    async def _start_recording(self) -> None:
        """Record every speaker of the call to its own file (DESIGN: Speech)."""
        from softphone.media.recording import SAMPLE_RATE as RECORDING_RATE
        from softphone.media.recording import CallRecorder

        call, call_id = self.calls.call, self.calls.call_id
        if call is None or call_id is None or self.recorder is not None:
            return
        recorder = CallRecorder(
            directory=self.context.settings.recordings_path,
            call_id=call_id,
            history=self.context.history,
        )
        try:
            await recorder.start()
        except SoftphoneError as exc:
            log.warning("recording unavailable", extra={"error": exc.message})
            return
        except OSError:
            log.warning("recording unavailable: the recording folder is not writable")
            return
        self.recorder = recorder
        self._recording_offs.append(
            call.session.each_remote_audio(
                lambda audio: recorder.add_remote(audio) if _speech(audio) else None
            )
        )
        mic = self.calls.devices.mic
        if mic is not None and RECORDING_RATE == 48000:
            identity = self.calls.identity
            await recorder.open_track(identity, align=False)

            def feed(pcm: Any) -> None:
                # A muted agent records silence, keeping the file on the timeline.
                recorder.feed(identity, pcm if not self.calls.muted else bytes(2 * len(pcm)))

            self._recording_offs.append(mic.add_tap(feed))

    async def _start_consult_capture(self) -> None:
        """Record and transcribe the consult leg into the same call's timeline.

        DESIGN: the consult leg is part of the call. A's own voice is already in
        A's file of the call (one file per speaker); here B's track is recorded
        with leg ``consult`` and transcribed into the same call.
        """
        from softphone.media.recording import CallRecorder

        consult, call_id = self.calls.legs.get("consult"), self.calls.call_id
        if consult is None or call_id is None or self.consult_recorder is not None:
            return
        recorder = CallRecorder(
            directory=self.context.settings.recordings_path,
            call_id=call_id,
            history=self.context.history,
            leg="consult",
        )
        try:
            await recorder.start()
        except (SoftphoneError, OSError):
            log.warning("recording of the consult leg unavailable")
        else:
            self.consult_recorder = recorder
        recording = self.consult_recorder

        def on_audio(audio: RemoteAudio) -> None:
            if not _speech(audio):
                return
            if recording is not None:
                recording.add_remote(audio)
            if self.live is not None:
                self.live.add_remote(audio, leg="consult")

        self._consult_offs.append(consult.session.each_remote_audio(on_audio))

    async def _stop_consult_capture(self) -> None:
        for off in self._consult_offs:
            off()
        self._consult_offs.clear()
        recorder, self.consult_recorder = self.consult_recorder, None
        if recorder is not None:
            await recorder.aclose()

    async def _stop_recording(self) -> None:
        await self._stop_consult_capture()
        for off in self._recording_offs:
            off()
        self._recording_offs.clear()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            await recorder.aclose()

    async def _start_transcript(self) -> None:
        from softphone.speech.live_transcriber import LiveTranscriber

        call = self.calls.call
        if call is None:
            return
        if self.calls.call_id is None:
            # The call's history entry is written just after its leg opened;
            # the segments belong to it (without its id none would be stored).
            started = asyncio.Event()
            off = self.calls.on("call_started", lambda _room: started.set())
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(started.wait(), CALL_ID_WAIT_S)
            finally:
                off()
        live = await LiveTranscriber.open(
            self.context.settings,
            on_segment=self._on_segment,
            on_error=lambda e: self.events.emit("transcript_error", e),
            history=self.context.history,
            call_id=self.calls.call_id,
        )
        if live is None:
            return
        if self.calls.call is not call:  # the call ended while the model loaded
            await live.aclose()
            return
        self.live = live
        self._offs.append(
            call.session.each_remote_audio(
                lambda audio: live.add_remote(audio) if _speech(audio) else None
            )
        )
        mic = self.calls.devices.mic
        if mic is not None:
            identity = self.calls.identity
            self._offs.append(
                mic.add_tap(
                    lambda pcm: (
                        live.feed(
                            identity, pcm, leg="consult" if "consult" in self.calls.legs else "call"
                        )
                        if not self.calls.muted
                        else None
                    )
                )
            )

    def _on_segment(self, seg: TranscriptSegment) -> None:
        if seg.final:
            self.segments.append(seg)
        self.events.emit("segment", seg)

    async def aclose(self) -> None:
        """Leave the lobby, stop the transcript and background work."""
        for off in self._offs:
            off()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.live is not None:
            await self.live.aclose()
        await self._stop_recording()
        if self.agent_call is not None:
            await self.agent_call.aclose()
        if self.lobby is not None:
            await self.lobby.aclose()


def _speech(audio: RemoteAudio) -> bool:
    """Whether a remote track carries someone's voice (not hold audio)."""
    return audio.name != HOLD_TRACK


__all__ = ["AgentController", "MediaGap", "Offer", "ServiceLost", "Withdrawn"]
