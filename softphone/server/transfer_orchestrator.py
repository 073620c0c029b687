"""The warm-transfer orchestrator: the embedded :class:`TransferService`.

Drives :class:`~softphone.domain.transfer.Transfer` over the real LiveKit
server API: creates R2, mints tokens, gets a summary (timeout-bounded, with
the offline fallback marked), stores it as R2's metadata and sends it on
:data:`SUMMARY_TOPIC`, plays hold audio in R1, offers the call to B by RPC in
the lobby, moves the caller make-before-break (or brings B to R1 when the
caller cannot move), removes A and deletes rooms. A watcher task per transfer
notices the caller hanging up and B leaving. Every transition goes to the
``transfer_changed`` event, to A as a data message in R1, and (given a store)
to the call's history: the chain of custody.

Open-source LiveKit has no MoveParticipant, so moving the caller means the
caller's own app reconnects (:class:`~softphone.client.caller_mover.CallerMover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from livekit import rtc

from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.domain.summary import SpeakerRoles
from softphone.domain.transcript import TranscriptSegment, pack_transcript
from softphone.domain.transfer import (
    EndReason,
    Phase,
    Transfer,
    TransferSnapshot,
    consults,
    summarizes,
)
from softphone.errors import (
    LiveKitError,
    NotFoundError,
    SoftphoneError,
    TransferError,
    ValidationError,
)
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import (
    COMMAND_TO_ROOM,
    RPC_CALL_ASSIGNED,
    RPC_JOIN,
    RPC_MOVE,
    RPC_OFFER,
    RPC_STANDBY,
    RPC_WITHDRAW,
    STANDBY_ADMIT,
    STATUS_TOPIC,
    SUMMARY_TOPIC,
    AgentEntry,
    CallInfo,
    CallTicket,
    RoomEntry,
    ServiceInfo,
    SupervisorMode,
    TokenGrant,
    TokenRoleName,
    TransferRequest,
    TransferService,
    TransferTicket,
)
from softphone.server.agent_directory import AgentDirectory
from softphone.server.call_registry import CallRegistry, MemoryCallRegistry, unguessable_room
from softphone.server.command_signer import CommandSigner
from softphone.server.room_admin import RoomAdmin
from softphone.server.state import MemoryState, ServiceState, StateError
from softphone.server.token_minter import TokenMinter, TokenRole
from softphone.speech.summarizer import Summarizer, summarize_with_fallback
from softphone.store.custody import CustodyLog

log = logging.getLogger(__name__)

HOLD_FREQ_HZ = 330.0
# Hold audio goes out in 100 ms frames: every frame is an FFI call and a
# callback in this process, for every call on hold at once.
HOLD_FRAME_MS = 100
# While the caller moves the rooms are checked first after MOVE_POLL_S, then
# less and less often (x1.5 up to MOVE_POLL_MAX_S): a move is usually seen at
# once, and many moves at once do not flood the server with room listings.
MOVE_POLL_S = 0.1
MOVE_POLL_MAX_S = 1.0
# How long B's app may take to acknowledge an offer (it rings, then answers).
OFFER_DELIVERY_TIMEOUT_S = 10.0
# LiveKit caps an RPC payload at 15 KiB; the signed offer keeps a margin under
# it. Its body (summary, transcript) is packed into OFFER_BODY_BYTES: signing
# wraps it as JSON text in JSON, which escapes every quote once more.
OFFER_PAYLOAD_BYTES = 14 * 1024
OFFER_BODY_BYTES = 9 * 1024
# When a closed room is checked again for late joiners who re-created it.
SWEEP_DELAYS_S = (1.0, 2.0, 4.0)
MOVE_LEAVE_GRACE_S = 2.0
# A caller's earlier call counts as abandoned once the caller is not in its
# room this long after it was created (time to connect).
CALL_JOIN_GRACE_S = 30.0
# How long a new call's assignment is offered to an agent not (yet) in the lobby.
ANNOUNCE_TIMEOUT_S = 15.0
# Pause between attempts of an RPC that was not delivered or not acknowledged.
RPC_RETRY_S = 0.25
# How long the caller's app may take to get on standby in the transfer room.
STANDBY_DELIVERY_TIMEOUT_S = 15.0
# A replica drives a transfer while it renews its lease; the lease lapses
# this long after the replica stalled, and another replica takes over. A
# replica whose process died is seen gone within half a second (nobody
# listens on its channel) without waiting for this. Not shorter: at 2 s, 25
# transfers at once on 2 cores delayed renewals past it, and the other
# replica took 9 live transfers over and returned their callers to A.
LEASE_TTL_S = 10.0
# How often a replica looks for transfers whose replica is gone (at most).
ORPHAN_SCAN_S = 0.25
# How long a request forwarded to the replica driving a transfer may take.
FORWARD_TIMEOUT_S = 15.0
# Phases in which the caller hanging up ends the call (later it is moving rooms).
_WATCHED: tuple[Phase, ...] = ("preparing", "offering", "consulting")


@dataclasses.dataclass
class _Run:
    """One transfer and the live state around it."""

    transfer: Transfer
    call_id: str
    decision: asyncio.Future[tuple[bool, str]]
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    hold: RtcSession | None = None
    hold_tone: TonePlayer | None = None
    intro_moved: bool = False
    # The caller's app said it waits in R2 (standby delivered).
    on_standby: bool = False
    # Another replica holds the lease now (this one stalled): hands off.
    lost: bool = False
    # Set when LiveKit reports a change in R1 or R2 (webhooks): look now.
    poke: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


def _hold_identity(t: Transfer) -> str:
    """The participant that plays hold audio in the call room."""
    return f"hold-{t.transfer_id}"


class TransferOrchestrator(TransferService):
    """Runs warm transfers in-process with the LiveKit API key and secret.

    Args:
        url: The LiveKit URL handed to clients with their tokens.
        rooms: Server API access (not closed by this object).
        minter: Token minter.
        summarizer: The configured summarizer.
        fallback_summarizer: The offline summarizer used when it fails.
        lobby_room: The agent directory's room.
        offer_timeout_s: How long an offer rings before it counts as no answer.
        move_timeout_s: How long the caller's app may take to move.
        join_timeout_s: How long B may take to join R2 after accepting.
        poll_interval_s: How often rooms are checked for people leaving.
        hold_audio: Play a hold tone to the caller in R1.
        history: Where the chain of custody is written (optional).
        registry: The call registry (default: a new one in memory).
        call_join_grace_s: A caller's earlier call whose caller is not in its
            room this long after it was created counts as abandoned when the
            caller places a new one.
        signer: Signs every command sent to the apps (default: a new key).
        state: Live state shared with the other replicas (default: this
            process's memory).
        lease_ttl_s: How soon after this replica stops another one takes
            over its transfers.
        clock: Wall clock for timestamps.
    """

    def __init__(
        self,
        *,
        url: str,
        rooms: RoomAdmin,
        minter: TokenMinter,
        summarizer: Summarizer,
        fallback_summarizer: Summarizer,
        lobby_room: str = "lobby",
        offer_timeout_s: float = 30.0,
        move_timeout_s: float = 8.0,
        join_timeout_s: float = 10.0,
        poll_interval_s: float = 0.25,
        hold_audio: bool = True,
        history: CustodyLog | None = None,
        registry: CallRegistry | None = None,
        call_join_grace_s: float = CALL_JOIN_GRACE_S,
        signer: CommandSigner | None = None,
        state: ServiceState | None = None,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.state = state or MemoryState()
        self._lease_ttl_s = lease_ttl_s
        self.signer = signer or CommandSigner()
        self.registry = registry or MemoryCallRegistry(clock=clock)
        self._join_grace_s = call_join_grace_s
        self._url = url
        self._rooms = rooms
        self._minter = minter
        self._summarizer = summarizer
        self._fallback = fallback_summarizer
        self.directory = AgentDirectory(rooms=rooms, lobby_room=lobby_room)
        self._offer_timeout_s = offer_timeout_s
        self._move_timeout_s = move_timeout_s
        self._join_timeout_s = join_timeout_s
        self._poll_s = poll_interval_s
        self._hold_audio = hold_audio
        self._history = history
        # Where the chain of custody goes (the records API reads it).
        self.history = history
        self._clock = clock
        # The transfers this replica drives.
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ---- helpers -------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transfer task failed", exc_info=task.exception())

    def _grant(
        self,
        role: TokenRole,
        identity: str,
        room: str,
        *,
        standby: bool = False,
        supervisor_mode: SupervisorMode = "listen",
    ) -> TokenGrant:
        issued = self._minter.mint(
            role=role,
            identity=identity,
            room=room,
            standby=standby,
            supervisor_mode=supervisor_mode,
        )
        return TokenGrant(
            token=issued.token,
            identity=identity,
            room=room,
            url=self._url,
            expires_at=issued.expires_at,
        )

    def _command(self, method: str, *, to: str, room: str, body: dict[str, Any]) -> str:
        """The signed payload of a command to ``to`` (an identity, or "*") in ``room``."""
        return self.signer.sign(method, to=to, room=room, body=body)

    def _local(self, transfer_id: str) -> _Run | None:
        """The run of ``transfer_id`` if this replica drives it."""
        if not isinstance(transfer_id, str) or not transfer_id:
            raise ValidationError("transfer_id", "must not be empty")
        run = self._runs.get(transfer_id)
        return run if run is not None and not run.lost else None

    async def _forward(self, transfer_id: str, method: str, **args: str) -> Any:
        """Run ``method`` on the replica that drives ``transfer_id``.

        Raises:
            NotFoundError: No such transfer.
            TransferError: It is over, or being taken over (try again shortly).
        """
        owner = await self.state.lease_owner(transfer_id)
        if owner is not None and owner != self.state.replica:
            try:
                return await self.state.forward(
                    owner,
                    method,
                    {"transfer_id": transfer_id, **args},
                    timeout_s=FORWARD_TIMEOUT_S,
                )
            except NotFoundError:
                pass  # the replica is gone; its lease lapses shortly
        held = await self.state.get_transfer(transfer_id)
        if held is None:
            raise NotFoundError("transfer not found", details={"transfer_id": transfer_id})
        if not held[0].active:
            raise TransferError(f"the transfer is over ({held[0].phase})")
        raise TransferError(
            "the transfer is being taken over by another replica; try again",
            retryable=True,
            details={"transfer_id": transfer_id},
        )

    async def _serve(self, method: str, args: dict[str, Any]) -> Any:
        """A request another replica forwarded for a transfer this one drives."""
        transfer_id, agent = str(args.get("transfer_id", "")), str(args.get("agent", ""))
        if self._local(transfer_id) is None:
            raise NotFoundError("transfer not found", details={"transfer_id": transfer_id})
        if method == "accept":
            return (await self.accept(transfer_id, agent=agent)).to_dict()
        if method == "decline":
            reason = str(args.get("reason", ""))
            return (await self.decline(transfer_id, agent=agent, reason=reason)).to_dict()
        if method == "complete":
            return (await self.complete(transfer_id, agent=agent)).to_dict()
        if method == "cancel":
            return (await self.cancel(transfer_id, agent=agent)).to_dict()
        if method == "end_call":
            await self._end_running(transfer_id)
            return None
        raise NotFoundError("no such request", details={"method": method})

    async def _close_room(self, room: str, *, sweep: bool = True) -> None:
        """Remove everyone, then delete the room.

        Removing first matters: a client cut off by a bare room deletion may
        reconnect with its still-valid token and so create the room again.
        A join already under way when the room closes (A's consult leg, whose
        connect is never cancelled mid-way) re-creates it the same way, so
        the room is checked again shortly after and closed if it came back.
        """
        try:
            people = await self._rooms.list_participants(room)
        except LiveKitError:
            people = []
        await asyncio.gather(
            *(self._rooms.remove_participant(room, p.identity) for p in people),
            return_exceptions=True,
        )
        with contextlib.suppress(LiveKitError):
            await self._rooms.delete_room(room)
        if sweep:
            self._spawn(self._sweep_room(room))

    async def _sweep_room(self, room: str) -> None:
        for delay_s in SWEEP_DELAYS_S:
            await asyncio.sleep(delay_s)
            with contextlib.suppress(LiveKitError):
                if await self._rooms.list_rooms([room]):
                    log.info("a closed room came back; closing it again")
                    await self._close_room(room, sweep=False)

    @staticmethod
    async def _nap(run: _Run, seconds: float) -> None:
        """Sleep up to ``seconds``, waking at once when LiveKit reports a change."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.poke.wait(), seconds)
        run.poke.clear()

    def _on_state_event(self, event: dict[str, Any]) -> None:
        """A room event (from LiveKit's webhooks, via any replica) wakes the transfers there."""
        if event.get("type") != "room":
            return
        room = event.get("room")
        for run in self._runs.values():
            if room in (run.transfer.call_room, run.transfer.new_room):
                run.poke.set()

    async def room_event(self, kind: str, *, room: str, identity: str = "") -> None:
        """Tell every replica what LiveKit reported (a verified webhook) about ``room``.

        Rooms and participants change under the transfers: the replica that
        drives one in ``room`` looks at once instead of at its next poll,
        which remains only as a slow safety net.
        """
        await self.state.publish(
            {"type": "room", "event": kind, "room": room, "identity": identity}
        )

    async def _present(self, room: str) -> set[str]:
        try:
            return {p.identity for p in await self._rooms.list_participants(room)}
        except NotFoundError:
            return set()

    async def _changed(self, run: _Run, *, from_agent: str = "", to_agent: str = "") -> None:
        t = run.transfer
        snap = t.snapshot()
        try:
            await self.state.put_transfer(snap, call_id=run.call_id)
        except StateError:
            log.warning(
                "could not share the transfer's state", extra={"transfer_id": t.transfer_id}
            )
        self.emit("transfer_changed", snap)
        log.info(
            "transfer step",
            extra={"transfer_id": t.transfer_id, "phase": t.phase, "version": t.version},
        )
        self._spawn(self._notify_a(snap))
        if self._history is not None and run.call_id:
            detail: dict[str, Any] = {"mode": t.mode, "new_room": t.new_room}
            if t.reason is not None:
                detail["reason"] = dataclasses.asdict(t.reason)
            if t.strategy is not None:
                detail["strategy"] = t.strategy
            if t.summary is not None:
                detail["summary_source"] = t.summary.source
                detail["summary_fallback"] = t.summary.fallback
            try:
                await self._history.add_transfer_event(
                    run.call_id,
                    t.transfer_id,
                    t.phase,
                    from_agent=from_agent or t.from_agent,
                    to_agent=to_agent or t.to_agent,
                    detail=detail,
                    at=t.timeline[-1].at,
                )
            except SoftphoneError:
                log.exception("could not write the transfer to history")

    async def _notify_a(self, snap: TransferSnapshot) -> None:
        with contextlib.suppress(SoftphoneError):
            await self._rooms.send_data(
                snap.call_room,
                self._command(
                    STATUS_TOPIC, to=snap.from_agent, room=snap.call_room, body=snap.to_dict()
                ),
                topic=STATUS_TOPIC,
                destination_identities=[snap.from_agent],
            )

    async def _step(self, run: _Run, phase: Phase, note: str = "") -> bool:
        if run.lost or not run.transfer.can(phase):
            return False
        run.transfer.advance(phase, at=self._clock(), note=note)
        await self._changed(run)
        return True

    # ---- start ---------------------------------------------------------------

    async def start_transfer(self, request: TransferRequest) -> TransferTicket:
        """See :meth:`TransferService.start_transfer`.

        Everything is checked before the first side effect: the call is a
        registered one, the request names its caller and its assigned agent,
        both are in the call room and B is available. Should any later step
        fail, all of it is undone (hold stops, R2 closed, offer withdrawn) and
        the transfer returns with a typed reason; the ticket carries its id.

        Raises:
            NotFoundError: No such call for this agent (the same answer
                whether the room exists or not), or a party is missing.
            ValidationError: The caller is not this call's caller.
            TransferError: A transfer of the call is already running, or B is
                not available.
        """
        if self._closed:
            raise TransferError("the transfer service is closed")
        req = request.validate()
        call = await self.registry.by_room(req.call_room)
        if call is None or call.room != req.call_room or call.agent != req.from_agent:
            raise NotFoundError("call not found", details={"field": "call_room"})
        if req.caller != call.caller:
            raise ValidationError("caller", "is not the caller of this call")
        transfer_id = uuid.uuid4().hex[:16]
        running = await self.state.claim_room(req.call_room, transfer_id)
        if running is not None:
            raise TransferError(
                "a transfer of this call is already running",
                details={"transfer_id": running},
            )
        try:
            await self._check_parties(req)
            await self.state.take_lease(transfer_id, self._lease_ttl_s)
        except BaseException:
            await self.state.free_room(req.call_room, transfer_id)
            raise
        transfer = Transfer(
            transfer_id=transfer_id,
            mode=req.mode,
            call_room=req.call_room,
            new_room=unguessable_room("xfer"),
            caller=req.caller,
            from_agent=req.from_agent,
            to_agent=req.to_agent,
            at=self._clock(),
        )
        run = _Run(
            transfer=transfer,
            call_id=call.call_id,
            decision=asyncio.get_running_loop().create_future(),
        )
        self._runs[transfer_id] = run
        try:
            return await self._start(run, req)
        except Exception as exc:
            # Whatever failed after the first side effect: undo all of it.
            log.exception("transfer could not start", extra={"transfer_id": transfer_id})
            async with run.lock:
                reason = "could not start the transfer"
                if isinstance(exc, SoftphoneError):
                    reason = f"could not start the transfer: {exc.message}"
                await self._give_back(run, EndReason("network", reason))
            return TransferTicket(transfer=transfer.snapshot(), consult_token=None)

    async def _start(self, run: _Run, req: TransferRequest) -> TransferTicket:
        transfer = run.transfer
        new_room = transfer.new_room
        await self._changed(run)
        await self.registry.open_consult(
            run.call_id, new_room, from_agent=req.from_agent, to_agent=req.to_agent
        )
        try:
            await self._rooms.create_room(new_room, empty_timeout_s=120, departure_timeout_s=5)
        except SoftphoneError:
            await self._give_back(run, EndReason("network", "could not create the transfer room"))
            return TransferTicket(transfer=transfer.snapshot(), consult_token=None)
        self._spawn(self._watch(run))
        await self._prepare_summary(run, req)
        async with run.lock:
            if not await self._step(run, "offering"):
                return TransferTicket(transfer=transfer.snapshot(), consult_token=None)
        if self._hold_audio:
            self._spawn(self._start_hold(run))
        try:
            await self._deliver(
                self.directory.lobby_room,
                req.to_agent,
                RPC_OFFER,
                self._signed_offer(transfer, req.transcript),
                within_s=min(self._offer_timeout_s, OFFER_DELIVERY_TIMEOUT_S),
            )
        except SoftphoneError as exc:
            log.warning("offer could not be delivered", extra={"error": exc.message})
            await self._give_back(run, EndReason("no_answer", "the offer could not be delivered"))
        else:
            self._spawn(self._await_decision(run))
            self._spawn(self._standby_caller(run))
        token = self._grant("agent", req.from_agent, new_room) if consults(req.mode) else None
        return TransferTicket(transfer=transfer.snapshot(), consult_token=token)

    async def _deliver(
        self, room: str, identity: str, method: str, payload: str, *, within_s: float
    ) -> str:
        """Perform an RPC, trying again while it only failed to get through.

        Under load a participant may not acknowledge within LiveKit's two
        seconds, its data channel may be re-establishing, or it may be
        reconnecting (so momentarily not in the room): failures that say
        nothing about the participant's answer. The receivers treat a repeated
        request as the same one, so trying again is safe.

        Raises:
            SoftphoneError: The participant answered with an error (e.g. the
                method is not registered), or ``within_s`` passed.
        """
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._rooms.perform_rpc(
                    room, identity, method, payload, response_timeout_s=max(left, 1.0)
                )
            except SoftphoneError as exc:
                transient = exc.retryable or isinstance(exc, NotFoundError)
                if not transient or deadline - time.monotonic() < 2 * RPC_RETRY_S:
                    raise
                log.info("rpc not through; trying again", extra={"error": exc.message})
            await asyncio.sleep(RPC_RETRY_S)

    async def _standby_caller(self, run: _Run) -> None:
        """Have the caller's app connect to R2 on standby while B is offered the call.

        Unable to hear or send, its mic muted (see the token minter), so the
        consult stays private and the caller unheard. B alone may subscribe
        to that muted track already (``admit``): completing then only
        changes permissions and unmutes, instead of connecting and
        negotiating B's subscription when every other call on the server may
        be moving too. A caller app without standby (SIP, foreign) just joins
        when moved.
        """
        t = run.transfer
        grant = self._grant("caller", t.caller, t.new_room, standby=True)
        try:
            await self._deliver(
                t.call_room,
                t.caller,
                RPC_STANDBY,
                self._command(
                    RPC_STANDBY,
                    to=t.caller,
                    room=t.call_room,
                    body={**grant.to_dict(), STANDBY_ADMIT: [t.to_agent]},
                ),
                within_s=STANDBY_DELIVERY_TIMEOUT_S,
            )
            run.on_standby = True
        except SoftphoneError as exc:
            log.info("caller not on standby; it joins when moved", extra={"error": exc.message})
        if not t.active and t.phase != "completed":
            # Returned or ended while the caller was connecting: that join
            # re-created the closed room; close it again.
            await self._close_room(t.new_room, sweep=False)

    async def _publishing(self, room: str) -> set[str]:
        """Identities in ``room`` sending audio (a standby caller's mic is muted)."""
        try:
            return {
                p.identity
                for p in await self._rooms.list_participants(room)
                if p.unmuted_audio_tracks
            }
        except NotFoundError:
            return set()

    async def _check_parties(self, req: TransferRequest) -> None:
        present = await self._rooms.list_participants(req.call_room)
        who = {p.identity for p in present}
        if req.caller not in who:
            raise NotFoundError("the caller is not in the call room", details={"field": "caller"})
        if req.from_agent not in who:
            raise NotFoundError(
                "the agent is not in the call room", details={"field": "from_agent"}
            )
        agent = await self.directory.get(req.to_agent)
        if agent.presence != "available":
            raise TransferError(
                f"the agent is {agent.presence}", details={"identity": req.to_agent}
            )

    @staticmethod
    def _offer(
        t: Transfer,
        transcript: Sequence[TranscriptSegment] = (),
        body_bytes: int = OFFER_BODY_BYTES,
    ) -> dict[str, Any]:
        offer: dict[str, Any] = {
            "transfer_id": t.transfer_id,
            "from_agent": t.from_agent,
            "caller": t.caller,
            "mode": t.mode,
            "new_room": t.new_room,
            "summary": t.summary.to_dict() if t.summary else None,
        }
        budget = body_bytes - len(json.dumps(offer).encode())
        offer.update(pack_transcript(transcript, budget))
        return offer

    def _signed_offer(self, t: Transfer, transcript: Sequence[TranscriptSegment] = ()) -> str:
        """The signed offer to B, under LiveKit's RPC cap whatever the text holds.

        Quotes in the transcript grow most when signed (escaped twice), so
        should the packed body still come out too large, less of the
        transcript is sent.
        """
        room = self.directory.lobby_room
        body_bytes = OFFER_BODY_BYTES
        while True:
            body = self._offer(t, transcript, body_bytes)
            payload = self._command(RPC_OFFER, to=t.to_agent, room=room, body=body)
            if len(payload.encode()) <= OFFER_PAYLOAD_BYTES or not body["transcript"]:
                return payload
            body_bytes //= 2

    async def _prepare_summary(self, run: _Run, req: TransferRequest) -> None:
        t = run.transfer
        if not summarizes(t.mode):
            return
        if req.summary is not None:
            card = dataclasses.replace(req.summary, source="edited")
        else:
            # Who is who comes from the call registry (checked when the
            # transfer started), never from what was said.
            roles = SpeakerRoles(caller=t.caller, agents=frozenset({t.from_agent, t.to_agent}))
            card = await summarize_with_fallback(
                self._summarizer, self._fallback, req.transcript, roles=roles
            )
        if not t.active:
            return
        t.set_summary(card)
        meta = json.dumps({"transfer_id": t.transfer_id, "summary": card.to_dict()})
        try:
            await self._rooms.update_room_metadata(t.new_room, meta)
            summary = self._command(
                SUMMARY_TOPIC,
                to=COMMAND_TO_ROOM,
                room=t.new_room,
                body={"transfer_id": t.transfer_id, "summary": card.to_dict()},
            )
            await self._rooms.send_data(t.new_room, summary, topic=SUMMARY_TOPIC)
        except SoftphoneError:
            log.warning("could not publish the summary to the transfer room")
        if self._history is not None and run.call_id:
            with contextlib.suppress(SoftphoneError):
                await self._history.add_summary(run.call_id, card)

    # ---- hold ----------------------------------------------------------------

    async def _start_hold(self, run: _Run) -> None:
        t = run.transfer
        grant = self._grant("agent", _hold_identity(t), t.call_room)
        session = RtcSession(url=self._url, token=grant.token, listen=False)
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=2 * HOLD_FRAME_MS)
        try:
            await session.connect()
            # For the caller's ears only: A (consulting with B meanwhile) and
            # anyone else in R1 never receive it, and nobody decodes it for nothing.
            session.restrict_subscribers([t.caller])
            await session.publish_audio(source, name="hold")
        except SoftphoneError:
            await session.aclose()
            log.warning("hold audio unavailable")
            return
        tone = TonePlayer(source, freq=HOLD_FREQ_HZ, frame_ms=HOLD_FRAME_MS)
        tone.start()
        run.hold, run.hold_tone = session, tone
        if t.phase not in ("offering", "consulting"):
            await self._stop_hold(run)

    async def _stop_hold(self, run: _Run) -> None:
        tone, run.hold_tone = run.hold_tone, None
        session, run.hold = run.hold, None
        if tone is not None:
            await tone.aclose()
        if session is not None:
            await session.aclose()
            # A session closed while its track was still being negotiated may
            # not say goodbye, and the server would keep the hold participant
            # in the call room until it times out: remove it server-side too.
            with contextlib.suppress(SoftphoneError):
                await self._rooms.remove_participant(
                    run.transfer.call_room, _hold_identity(run.transfer)
                )

    # ---- offer, accept, decline ---------------------------------------------

    async def _await_decision(self, run: _Run) -> None:
        t = run.transfer
        try:
            accepted, text = await asyncio.wait_for(
                asyncio.shield(run.decision), self._offer_timeout_s
            )
        except TimeoutError:
            async with run.lock:
                if t.phase != "offering":
                    return
                if t.caller not in await self._present(t.call_room):
                    # Hung up while B's phone rang (the watcher had not seen it yet).
                    await self._end(run, EndReason("caller_left"))
                else:
                    await self._give_back(run, EndReason("no_answer"))
            return
        except asyncio.CancelledError:
            raise
        if not accepted:
            async with run.lock:
                if t.phase == "offering":
                    await self._give_back(run, EndReason("declined", text))
            return
        # B accepted: wait for B in R2, then consult (warm) or move (direct, cold).
        deadline = time.monotonic() + self._join_timeout_s
        while t.phase == "offering" and time.monotonic() < deadline:
            if t.to_agent in await self._present(t.new_room):
                break
            await self._nap(run, self._poll_s / 2)
        async with run.lock:
            if t.phase != "offering":
                return
            if t.to_agent not in await self._present(t.new_room):
                await self._give_back(run, EndReason("agent_left", "did not join"))
                return
            if consults(t.mode):
                await self._step(run, "consulting")
                return
            await self._complete_locked(run)

    async def accept(self, transfer_id: str, *, agent: str) -> TokenGrant:
        """See :meth:`TransferService.accept`."""
        validate_identity(agent, "agent")
        run = self._local(transfer_id)
        if run is None:
            return TokenGrant.from_dict(await self._forward(transfer_id, "accept", agent=agent))
        t = run.transfer
        if agent != t.to_agent:
            raise TransferError("only the agent offered the call may accept it")
        if t.phase != "offering" or run.decision.done():
            raise TransferError(f"the offer is no longer open ({t.phase})")
        run.decision.set_result((True, ""))
        return self._grant("agent", agent, t.new_room)

    async def decline(self, transfer_id: str, *, agent: str, reason: str = "") -> TransferSnapshot:
        """See :meth:`TransferService.decline`."""
        validate_identity(agent, "agent")
        if not isinstance(reason, str) or len(reason) > 500:
            raise ValidationError("reason", "must be text of at most 500 characters")
        run = self._local(transfer_id)
        if run is None:
            return TransferSnapshot.from_dict(
                await self._forward(transfer_id, "decline", agent=agent, reason=reason)
            )
        t = run.transfer
        if agent != t.to_agent:
            raise TransferError("only the agent offered the call may decline it")
        if t.phase != "offering" or run.decision.done():
            raise TransferError(f"the offer is no longer open ({t.phase})")
        async with run.lock:
            run.decision.set_result((False, reason))
            await self._give_back(run, EndReason("declined", reason.strip()))
        return t.snapshot()

    # ---- complete, cancel ----------------------------------------------------

    async def complete(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.complete`."""
        validate_identity(agent, "agent")
        run = self._local(transfer_id)
        if run is None:
            return TransferSnapshot.from_dict(
                await self._forward(transfer_id, "complete", agent=agent)
            )
        t = run.transfer
        if agent != t.from_agent:
            raise TransferError("only the transferring agent may complete the transfer")
        async with run.lock:
            if t.phase == "completing" and t.mode == "warm_intro" and run.intro_moved:
                await self._finish(run)
                return t.snapshot()
            if t.phase != "consulting":
                raise TransferError(f"cannot complete a transfer in phase {t.phase}")
            await self._complete_locked(run)
        return t.snapshot()

    async def _complete_locked(self, run: _Run) -> None:
        t = run.transfer
        await self._step(run, "completing")
        t.set_strategy("move_caller")
        grant = self._grant("caller", t.caller, t.new_room)
        # On standby (said so, or seen there): may speak and hear now.
        if run.on_standby or t.caller in await self._present(t.new_room):
            try:
                await self._rooms.set_permission(
                    t.new_room, t.caller, self._minter.permission("caller")
                )
            except SoftphoneError as exc:
                log.warning("standby caller not promoted", extra={"error": exc.message})
        try:
            outcome = await self._move_caller(
                t, self._command(RPC_MOVE, to=t.caller, room=t.call_room, body=grant.to_dict())
            )
        except SoftphoneError as exc:
            log.info("caller cannot move; bringing the agent", extra={"error": exc.message})
            outcome = "stuck"
        if outcome == "gone":
            await self._end(run, EndReason("caller_left", "while moving"))
            return
        if outcome == "moved":
            await self._stop_hold(run)
            if t.mode == "warm_intro":
                run.intro_moved = True
                await self._changed(run)
                return
            await self._finish(run)
            return
        await self._bring_agent(run)

    async def _move_caller(self, t: Transfer, grant: str) -> Literal["moved", "stuck", "gone"]:
        """Tell the caller to move, and follow the move.

        An instruction that did not get through (not acknowledged in time
        under load, the caller's connection re-establishing) is sent again,
        unless the caller is already arriving in R2 or no longer in R1; only
        an error answer from the caller's app (it cannot move) raises.

        Raises:
            SoftphoneError: The caller's app refused or does not know the instruction.
        """
        deadline = time.monotonic() + self._move_timeout_s
        while True:
            try:
                answer = await self._rooms.perform_rpc(
                    t.call_room,
                    t.caller,
                    RPC_MOVE,
                    grant,
                    response_timeout_s=max(deadline - time.monotonic(), 1.0),
                )
                return await self._await_move(t, joined=answer == "moved")
            except SoftphoneError as exc:
                if not (exc.retryable or isinstance(exc, NotFoundError)):
                    raise
                log.info("move instruction not through", extra={"error": exc.message})
            if t.caller in await self._publishing(t.new_room):
                return await self._await_move(t, joined=True)
            if time.monotonic() > deadline or t.caller not in await self._present(t.call_room):
                # Moving on its own (the answer was lost), hung up, or never obeying.
                return await self._await_move(t, joined=False)
            await asyncio.sleep(RPC_RETRY_S)

    async def _await_move(self, t: Transfer, *, joined: bool) -> Literal["moved", "stuck", "gone"]:
        """Wait for the caller to be in R2 and, briefly, to have left R1 itself.

        Args:
            t: The transfer.
            joined: The caller's app answered that it is in R2 already.

        Returns:
            ``moved``; ``stuck`` if the caller never showed up in R2 (its app
            did not obey); ``gone`` if it is in neither room (it hung up).
        """
        started = time.monotonic()
        deadline = started + self._move_timeout_s
        arrived: float | None = started if joined else None
        pause = MOVE_POLL_S
        while time.monotonic() < deadline:
            now = time.monotonic()
            if arrived is None:
                if t.caller in await self._publishing(t.new_room):
                    arrived = now
                elif now - started > MOVE_LEAVE_GRACE_S and t.caller not in await self._present(
                    t.call_room
                ):
                    return "gone"
            if arrived is not None and (
                now - arrived > MOVE_LEAVE_GRACE_S
                or t.caller not in await self._present(t.call_room)
            ):
                return "moved"
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, MOVE_POLL_MAX_S)
        return "moved" if arrived is not None else "stuck"

    async def _bring_agent(self, run: _Run) -> None:
        t = run.transfer
        t.set_strategy("bring_agent")
        if not await self._agent_arrives(t):
            await self._give_back(run, EndReason("network", "neither side could be moved"))
            return
        await self._stop_hold(run)
        with contextlib.suppress(NotFoundError, LiveKitError):
            await self._rooms.remove_participant(t.call_room, t.from_agent)
        await self._close_room(t.new_room)
        await self._step(run, "completed", "bring_agent")
        await self._release(run)

    async def _agent_arrives(self, t: Transfer) -> bool:
        """Tell B to come to R1, and judge by B talking there, as a move is judged.

        The answer to the instruction says little: B's app may answer from
        a transfer-room connection it is closing (the answer never arrives)
        or under load after the timeout. So the instruction is sent again
        while it did not get through, and B counts as arrived once its mic
        is heard in R1, checked with backoff for up to the move timeout.
        An error answer (B's app could not join, or its connection went
        while answering) ends it early only if B is still not heard in R1
        shortly after.
        """
        payload = self._command(
            RPC_JOIN,
            to=t.to_agent,
            room=t.new_room,
            body=self._grant("agent", t.to_agent, t.call_room).to_dict(),
        )
        deadline = time.monotonic() + self._move_timeout_s
        pause = MOVE_POLL_S
        refused_at: float | None = None
        rpc: asyncio.Task[str] | None = None
        try:
            while True:
                if rpc is not None and rpc.done():
                    exc = rpc.exception()
                    if isinstance(exc, SoftphoneError) and not (
                        exc.retryable or isinstance(exc, NotFoundError)
                    ):
                        log.info("agent's app answered with an error", extra={"error": exc.message})
                        refused_at = refused_at or time.monotonic()
                    elif exc is not None:
                        rpc = None  # did not get through: send it again
                if rpc is None:
                    rpc = asyncio.ensure_future(
                        self._rooms.perform_rpc(
                            t.new_room,
                            t.to_agent,
                            RPC_JOIN,
                            payload,
                            response_timeout_s=max(deadline - time.monotonic(), 1.0),
                        )
                    )
                if t.to_agent in await self._publishing(t.call_room):
                    return True
                now = time.monotonic()
                if now > deadline or (refused_at and now - refused_at > MOVE_LEAVE_GRACE_S):
                    log.warning("agent could not be brought in")
                    return False
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, MOVE_POLL_MAX_S)
        finally:
            if rpc is not None and not rpc.done():
                rpc.cancel()
                await asyncio.gather(rpc, return_exceptions=True)

    async def _finish(self, run: _Run) -> None:
        t = run.transfer
        with contextlib.suppress(NotFoundError, LiveKitError):
            await self._rooms.remove_participant(t.new_room, t.from_agent)
        await self._stop_hold(run)
        await self._close_room(t.call_room)
        await self._step(run, "completed", t.strategy or "")
        await self._release(run)

    async def cancel(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.cancel`."""
        validate_identity(agent, "agent")
        run = self._local(transfer_id)
        if run is None:
            return TransferSnapshot.from_dict(
                await self._forward(transfer_id, "cancel", agent=agent)
            )
        t = run.transfer
        if agent != t.from_agent:
            raise TransferError("only the transferring agent may cancel the transfer")
        async with run.lock:
            if t.phase not in ("preparing", "offering", "consulting"):
                raise TransferError(f"cannot cancel a transfer in phase {t.phase}")
            await self._give_back(run, EndReason("cancelled"))
        return t.snapshot()

    # ---- exits ---------------------------------------------------------------

    async def _withdraw(self, run: _Run, reason: str) -> None:
        t = run.transfer
        with contextlib.suppress(SoftphoneError):
            await self._rooms.perform_rpc(
                self.directory.lobby_room,
                t.to_agent,
                RPC_WITHDRAW,
                self._command(
                    RPC_WITHDRAW,
                    to=t.to_agent,
                    room=self.directory.lobby_room,
                    body={"transfer_id": t.transfer_id, "reason": reason},
                ),
                response_timeout_s=3.0,
            )

    async def _give_back(self, run: _Run, reason: EndReason) -> None:
        t = run.transfer
        was = t.phase
        if run.lost or not t.can("returned"):
            return
        t.give_back(reason, at=self._clock())
        if not run.decision.done():
            run.decision.set_result((False, reason.code))
        await self._changed(run)
        if was == "offering" and reason.code != "declined":
            await self._withdraw(run, reason.code)
        await self._stop_hold(run)
        await self._close_room(t.new_room)
        await self._release(run)

    async def _end(self, run: _Run, reason: EndReason) -> None:
        t = run.transfer
        was = t.phase
        if run.lost or not t.can("ended"):
            return
        t.end(reason, at=self._clock())
        if not run.decision.done():
            run.decision.set_result((False, reason.code))
        await self._changed(run)
        if was == "offering":
            await self._withdraw(run, reason.code)
        await self._stop_hold(run)
        await asyncio.gather(self._close_room(t.new_room), self._close_room(t.call_room))
        await self._release(run)
        if self._history is not None and run.call_id:
            with contextlib.suppress(SoftphoneError):
                await self._history.end_call(run.call_id)

    async def _release(self, run: _Run) -> None:
        """The transfer is over: free its call for the next one and settle the registry."""
        t = run.transfer
        self._runs.pop(t.transfer_id, None)
        with contextlib.suppress(StateError):
            await self.state.free_room(t.call_room, t.transfer_id)
            await self.state.drop_lease(t.transfer_id)
        if t.phase == "completed":
            room = t.call_room if t.strategy == "bring_agent" else t.new_room
            await self.registry.close_consult(run.call_id, t.new_room)
            await self._call_event(
                "handed_over",
                await self.registry.hand_over(run.call_id, room=room, agent=t.to_agent),
            )
        elif t.phase == "ended":
            await self._call_event("ended", await self.registry.end(run.call_id))
        else:
            await self.registry.close_consult(run.call_id, t.new_room)

    async def _call_event(self, change: str, call: CallInfo) -> None:
        """Tell every replica's event streams that a call was created, handed over or ended."""
        with contextlib.suppress(StateError):
            await self.state.publish({"type": "call", "change": change, "call": call.to_dict()})

    async def _watch(self, run: _Run) -> None:
        """Notice the caller hanging up and B leaving the consult."""
        t = run.transfer
        misses = 0
        while t.active:
            await self._nap(run, self._poll_s)
            if t.phase == "completing" and not run.intro_moved:
                continue  # the caller is between rooms; the move itself watches it
            try:
                if t.phase in _WATCHED and t.caller not in await self._present(t.call_room):
                    async with run.lock:
                        if t.phase in _WATCHED:
                            await self._end(run, EndReason("caller_left"))
                    return
                if (
                    t.phase == "completing"
                    and run.intro_moved
                    and t.caller not in await self._present(t.new_room)
                ):
                    async with run.lock:
                        if t.phase == "completing":
                            await self._end(run, EndReason("caller_left"))
                    return
                if t.phase == "consulting" and t.to_agent not in await self._present(t.new_room):
                    async with run.lock:
                        if t.phase == "consulting":
                            await self._give_back(run, EndReason("agent_left"))
                    return
                misses = 0
            except LiveKitError:
                misses += 1
                if misses >= 20:
                    async with run.lock:
                        await self._give_back(run, EndReason("network"))
                    return

    # ---- queries -------------------------------------------------------------

    async def status(self, transfer_id: str) -> TransferSnapshot:
        """See :meth:`TransferService.status`."""
        run = self._local(transfer_id)
        if run is not None:
            return run.transfer.snapshot()
        held = await self.state.get_transfer(transfer_id)
        if held is None:
            raise NotFoundError("transfer not found", details={"transfer_id": transfer_id})
        return held[0]

    async def wait_for_change(
        self, transfer_id: str, *, after_version: int, timeout_s: float = 10.0
    ) -> TransferSnapshot:
        """See :meth:`TransferService.wait_for_change`.

        Whichever replica drives the transfer, its changes reach every
        replica as events, so any replica answers.
        """
        if not 0 <= timeout_s <= 60:
            raise ValidationError("timeout_s", "must be between 0 and 60")
        changed = asyncio.Event()

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "transfer" and (
                event.get("transfer", {}).get("transfer_id") == transfer_id
            ):
                changed.set()

        unsubscribe = self.state.on_event(on_event)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                changed.clear()
                snap = await self.status(transfer_id)
                left = deadline - time.monotonic()
                if snap.version > after_version or left <= 0:
                    return snap
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            unsubscribe()

    async def list_agents(self) -> list[AgentEntry]:
        """See :meth:`TransferService.list_agents`."""
        return await self.directory.list()

    async def list_rooms(self) -> list[RoomEntry]:
        """See :meth:`TransferService.list_rooms`."""
        return [RoomEntry(r.name, r.num_participants) for r in await self._rooms.list_rooms()]

    async def mint_token(
        self,
        *,
        identity: str,
        room: str,
        role: TokenRoleName,
        supervisor_mode: SupervisorMode = "listen",
    ) -> TokenGrant:
        """See :meth:`TransferService.mint_token`.

        Raises:
            NotFoundError: ``identity`` is no ``role`` party of ``room``, or
                the room does not exist: one answer, so names cannot be probed.
        """
        validate_identity(identity)
        validate_room_name(room)
        if role not in ("caller", "agent", "supervisor"):
            raise ValidationError("role", "must be caller, agent or supervisor")
        if room == self.directory.lobby_room:
            allowed = role == "agent"
        elif role == "supervisor":
            allowed = await self.registry.is_call_room(room)
        else:
            allowed = await self.registry.party_of(identity, room) == role
        if not allowed:
            raise NotFoundError("room not found")
        return self._grant(role, identity, room, supervisor_mode=supervisor_mode)

    async def create_call(self, *, caller: str, agent: str, requester: str) -> CallTicket:
        """See :meth:`TransferService.create_call`."""
        if self._closed:
            raise TransferError("the transfer service is closed")
        validate_identity(requester, "requester")
        try:
            call = await self.registry.create(caller=caller, agent=agent, requester=requester)
        except TransferError as exc:
            # The caller's previous call may have ended without anyone saying
            # so (the app closed, the network went): end it if it is over.
            if not await self._end_if_abandoned(str((exc.details or {}).get("call_id", ""))):
                raise
            call = await self.registry.create(caller=caller, agent=agent, requester=requester)
        if self._history is not None:
            try:
                await self._history.start_call(call.room, call_id=call.call_id)
                await self._history.add_participant(call.call_id, call.caller, "caller")
                await self._history.add_participant(call.call_id, call.agent, "agent")
                if requester not in (call.caller, call.agent):
                    await self._history.add_participant(call.call_id, requester, "creator")
            except SoftphoneError:
                log.exception("could not write the call to history")
        await self._call_event("created", call)
        role: TokenRole = "agent" if requester == agent else "caller"
        token = self._grant(role, agent if role == "agent" else caller, call.room)
        self._spawn(self._announce(call))
        log.info("call created", extra={"call_id": call.call_id})
        return CallTicket(call=call, token=token)

    async def _end_if_abandoned(self, call_id: str) -> bool:
        """End ``call_id`` if its caller is no longer in it (past a grace for joining).

        Returns:
            Whether it was ended.
        """
        try:
            call = await self.registry.get(call_id)
        except NotFoundError:
            return True
        if self._clock() - call.created_at < self._join_grace_s or await self.state.room_transfer(
            call.room
        ):
            return False
        try:
            if call.caller in await self._present(call.room):
                return False
        except LiveKitError:
            return False  # cannot tell: keep it
        await self.registry.end(call_id)
        await self._close_room(call.room)
        if self._history is not None:
            with contextlib.suppress(SoftphoneError):
                await self._history.end_call(call_id)
        log.info("abandoned call ended", extra={"call_id": call_id})
        return True

    async def _announce(self, call: CallInfo) -> None:
        """Tell the assigned agent, in the lobby, that a call waits for it.

        Tried for a while (the agent's app may be coming online); an agent
        who is not in the lobby still finds the call with ``list_calls``.
        """
        try:
            await self._deliver(
                self.directory.lobby_room,
                call.agent,
                RPC_CALL_ASSIGNED,
                self._command(
                    RPC_CALL_ASSIGNED,
                    to=call.agent,
                    room=self.directory.lobby_room,
                    body=call.to_dict(),
                ),
                within_s=ANNOUNCE_TIMEOUT_S,
            )
        except SoftphoneError as exc:
            log.info("assigned agent not told in the lobby", extra={"error": exc.message})

    async def list_calls(self, *, identity: str, role: TokenRoleName) -> list[CallInfo]:
        """See :meth:`TransferService.list_calls`."""
        validate_identity(identity)
        if role == "supervisor":
            return await self.registry.calls()
        return await self.registry.calls(identity=identity)

    async def _end_running(self, transfer_id: str) -> None:
        run = self._local(transfer_id)
        if run is not None:
            async with run.lock:
                await self._end(run, EndReason("caller_left", "the call was ended"))

    async def end_call(self, call_id: str, *, identity: str) -> CallInfo:
        """See :meth:`TransferService.end_call`."""
        validate_identity(identity)
        call = await self.registry.get(call_id)
        if identity not in (call.caller, call.agent) or not call.active:
            raise NotFoundError("call not found")
        running = await self.state.room_transfer(call.room)
        if running is not None:
            if self._local(running) is not None:
                await self._end_running(running)
            else:
                with contextlib.suppress(SoftphoneError):
                    await self._forward(running, "end_call")
        ended = await self.registry.end(call_id)
        await self._call_event("ended", ended)
        await asyncio.gather(*(self._close_room(r) for r in (call.room, *call.consult_rooms)))
        if self._history is not None:
            with contextlib.suppress(SoftphoneError):
                await self._history.end_call(call_id)
        return ended

    async def service_info(self) -> ServiceInfo:
        """See :meth:`TransferService.service_info`."""
        return ServiceInfo(
            livekit_url=self._url,
            command_key=self.signer.public_key_b64(),
            lobby_room=self.directory.lobby_room,
        )

    # ---- replicas ------------------------------------------------------------

    async def start(self) -> TransferOrchestrator:
        """Share the state with the other replicas: answer their requests, keep
        this replica's leases alive, and take over transfers whose replica stopped.
        """
        self.state.serve_requests(self._serve)
        self.state.on_event(self._on_state_event)
        await self.state.start()
        self._spawn(self._keep_leases())
        return self

    async def _keep_leases(self) -> None:
        """Renew the leases of the transfers this replica drives; adopt orphans.

        A transfer whose lease expired is taken at once. One whose replica is
        gone (nobody listens on its request channel) is taken when the next
        look finds it still gone, so that a replica re-subscribing after a
        network blip keeps its transfers.
        """
        suspects: dict[str, str] = {}
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(self._lease_ttl_s / 4, ORPHAN_SCAN_S))
            try:
                if time.monotonic() - renewed >= self._lease_ttl_s / 4:
                    renewed = time.monotonic()
                    running = [tid for tid, run in self._runs.items() if not run.lost]
                    for transfer_id in await self.state.renew_leases(running, self._lease_ttl_s):
                        # This replica stalled past its lease; another one drives it now.
                        log.warning(
                            "lost the lease of a transfer", extra={"transfer_id": transfer_id}
                        )
                        if (run := self._runs.pop(transfer_id, None)) is not None:
                            run.lost = True
                orphans = await self.state.orphans()
                for transfer_id, gone in orphans.items():
                    if gone is not None and suspects.get(transfer_id) != gone:
                        continue  # seen gone once: look again before taking it
                    if await self.state.take_lease(
                        transfer_id, self._lease_ttl_s, from_replica=gone
                    ):
                        self._spawn(self._take_over(transfer_id))
                suspects = {t: gone for t, gone in orphans.items() if gone is not None}
            except StateError:
                log.warning("the shared state cannot be reached")

    async def _take_over(self, transfer_id: str) -> None:
        """Finish a transfer whose replica stopped, or return the caller to A.

        Nothing of the old replica's work is trusted but what LiveKit shows:
        a caller already talking in R2 is handed to B (completed); a caller
        still in R1 goes back to A (returned, ``network``); a caller in
        neither room hung up (ended). Either way R2 closes unless the call
        now lives there, and the hold participant goes.
        """
        held = await self.state.get_transfer(transfer_id)
        if held is None or not held[0].active:
            with contextlib.suppress(StateError):
                await self.state.drop_lease(transfer_id)
                if held is not None:
                    await self.state.free_room(held[0].call_room, transfer_id)
            return
        snap, call_id = held
        log.warning(
            "taking over a transfer", extra={"transfer_id": transfer_id, "phase": snap.phase}
        )
        run = _Run(
            transfer=Transfer.restore(snap),
            call_id=call_id,
            decision=asyncio.get_running_loop().create_future(),
        )
        self._runs[transfer_id] = run
        t = run.transfer
        with contextlib.suppress(SoftphoneError):
            await self._rooms.remove_participant(t.call_room, _hold_identity(t))
        async with run.lock:
            if t.phase == "completing" and t.caller in await self._publishing(t.new_room):
                t.set_strategy(t.strategy or "move_caller")
                await self._finish(run)
            elif t.caller in await self._present(t.call_room):
                await self._give_back(
                    run, EndReason("network", "the service replica running it stopped")
                )
            else:
                await self._end(run, EndReason("caller_left"))

    async def aclose(self) -> None:
        """Cancel background work and stop hold audio (rooms are left as they are).

        The leases of unfinished transfers are given up, so that another
        replica takes them over at once.
        """
        self._closed = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in list(self._runs.values()):
            await self._stop_hold(run)
            with contextlib.suppress(StateError):
                await self.state.drop_lease(run.transfer.transfer_id)
        await self.state.aclose()
