"""The warm-transfer state machine: phases, legal transitions, typed end reasons.

Pure: no clock, no I/O. Whoever drives a :class:`Transfer` passes the time of
each step, so every transition is timestamped and the machine is testable
without waiting.

::

    preparing -> offering -> consulting -> completing -> completed
                     |            |             |
                     |            +-------------+--> returned (caller back with A)
                     +---------------------------> ended    (caller gone)

``direct`` and ``cold`` transfers skip ``consulting`` (offering -> completing).
Every end other than ``completed`` carries an :class:`EndReason`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, get_args

from softphone.domain.summary import SummaryCard
from softphone.errors import TransferError, ValidationError

Phase = Literal[
    "preparing", "offering", "consulting", "completing", "completed", "returned", "ended"
]
Mode = Literal["warm", "warm_intro", "direct", "cold"]
ReasonCode = Literal[
    "declined", "no_answer", "agent_left", "caller_left", "cancelled", "room_closed", "network"
]
Strategy = Literal["move_caller", "bring_agent"]

PHASES: tuple[Phase, ...] = get_args(Phase)
MODES: tuple[Mode, ...] = get_args(Mode)
REASONS: tuple[ReasonCode, ...] = get_args(ReasonCode)
TERMINAL: frozenset[Phase] = frozenset({"completed", "returned", "ended"})
ACTIVE: frozenset[Phase] = frozenset(set(PHASES) - TERMINAL)

# Reasons that return the caller to A, and those that end the call.
RETURN_REASONS: frozenset[ReasonCode] = frozenset(
    {"declined", "no_answer", "agent_left", "cancelled", "room_closed", "network"}
)
END_REASONS: frozenset[ReasonCode] = frozenset({"caller_left", "room_closed", "network"})

_NEXT: dict[Phase, frozenset[Phase]] = {
    "preparing": frozenset({"offering", "returned", "ended"}),
    "offering": frozenset({"consulting", "completing", "returned", "ended"}),
    "consulting": frozenset({"completing", "returned", "ended"}),
    "completing": frozenset({"completed", "returned", "ended"}),
    "completed": frozenset(),
    "returned": frozenset(),
    "ended": frozenset(),
}

_REASON_TEXT: dict[ReasonCode, str] = {
    "declined": "the agent declined",
    "no_answer": "the agent did not answer in time",
    "agent_left": "the agent left",
    "caller_left": "the caller hung up",
    "cancelled": "the transfer was cancelled",
    "room_closed": "the room was closed",
    "network": "a network or server failure",
}


def validate_mode(mode: object) -> Mode:
    """Return ``mode`` if it is a transfer mode, else raise ValidationError."""
    if mode not in MODES:
        raise ValidationError("mode", f"must be one of {', '.join(MODES)}")
    return mode


def consults(mode: Mode) -> bool:
    """True for modes with a consult leg (A and B talk before the caller moves)."""
    return mode in ("warm", "warm_intro")


def summarizes(mode: Mode) -> bool:
    """True for modes that hand B a summary (every mode but ``cold``)."""
    return mode != "cold"


@dataclasses.dataclass(frozen=True)
class EndReason:
    """Why a transfer returned or ended.

    Attributes:
        code: The typed reason.
        text: Free text: B's reason when declining, or detail for the UI.
    """

    code: ReasonCode
    text: str = ""

    def describe(self) -> str:
        """A sentence the UI can show."""
        base = _REASON_TEXT[self.code]
        return f"{base}: {self.text}" if self.text else base


@dataclasses.dataclass(frozen=True)
class Transition:
    """One step of a transfer, timestamped (seconds since the epoch)."""

    phase: Phase
    at: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class TransferSnapshot:
    """A transfer as the UI and the HTTP API see it; JSON round-trips.

    Attributes:
        transfer_id: Unique id.
        mode: warm, warm_intro, direct or cold.
        phase: The current phase.
        call_room: R1, the caller's room.
        new_room: R2, the transfer room.
        caller: The caller's identity.
        from_agent: Agent A (hands the call over).
        to_agent: Agent B (takes it).
        summary: The summary card (None until made, and in cold mode).
        reason: Why it returned or ended (None otherwise).
        strategy: How the caller and B were joined (once completing).
        timeline: Every transition so far.
        version: Increases with every change; for long-polling.
    """

    transfer_id: str
    mode: Mode
    phase: Phase
    call_room: str
    new_room: str
    caller: str
    from_agent: str
    to_agent: str
    summary: SummaryCard | None
    reason: EndReason | None
    strategy: Strategy | None
    timeline: tuple[Transition, ...]
    version: int

    @property
    def active(self) -> bool:
        """True until the transfer completed, returned or ended."""
        return self.phase in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "transfer_id": self.transfer_id,
            "mode": self.mode,
            "phase": self.phase,
            "call_room": self.call_room,
            "new_room": self.new_room,
            "caller": self.caller,
            "from_agent": self.from_agent,
            "to_agent": self.to_agent,
            "summary": self.summary.to_dict() if self.summary else None,
            "reason": dataclasses.asdict(self.reason) if self.reason else None,
            "strategy": self.strategy,
            "timeline": [dataclasses.asdict(t) for t in self.timeline],
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferSnapshot:
        """Build from :meth:`to_dict` output (e.g. a backend answer).

        Raises:
            ValidationError: A field is missing or has a wrong value.
        """
        try:
            reason = data["reason"]
            return cls(
                transfer_id=str(data["transfer_id"]),
                mode=validate_mode(data["mode"]),
                phase=_phase(data["phase"]),
                call_room=str(data["call_room"]),
                new_room=str(data["new_room"]),
                caller=str(data["caller"]),
                from_agent=str(data["from_agent"]),
                to_agent=str(data["to_agent"]),
                summary=SummaryCard.from_dict(data["summary"]) if data["summary"] else None,
                reason=EndReason(_reason(reason["code"]), str(reason.get("text", "")))
                if reason
                else None,
                strategy=data.get("strategy"),
                timeline=tuple(
                    Transition(_phase(t["phase"]), float(t["at"]), str(t.get("note", "")))
                    for t in data["timeline"]
                ),
                version=int(data["version"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError("transfer", f"malformed snapshot ({exc})") from exc


def _phase(value: object) -> Phase:
    if value not in PHASES:
        raise ValidationError("phase", f"must be one of {', '.join(PHASES)}")
    return value


def _reason(value: object) -> ReasonCode:
    if value not in REASONS:
        raise ValidationError("reason", f"must be one of {', '.join(REASONS)}")
    return value


class Transfer:
    """One warm transfer's state; every change goes through a checked transition.

    Args:
        transfer_id: Unique id.
        mode: The transfer mode.
        call_room: R1.
        new_room: R2.
        caller: The caller's identity.
        from_agent: Agent A.
        to_agent: Agent B.
        at: When the transfer was started (enters ``preparing``).

    Raises:
        ValidationError: A bad mode, or A and B are the same agent.
    """

    def __init__(
        self,
        *,
        transfer_id: str,
        mode: Mode,
        call_room: str,
        new_room: str,
        caller: str,
        from_agent: str,
        to_agent: str,
        at: float,
    ) -> None:
        validate_mode(mode)
        if from_agent == to_agent:
            raise ValidationError("to_agent", "cannot transfer a call to oneself")
        if caller in (from_agent, to_agent):
            raise ValidationError("caller", "the caller cannot also be an agent of the transfer")
        if call_room == new_room:
            raise ValidationError("new_room", "must differ from the call room")
        self.transfer_id = transfer_id
        self.mode: Mode = mode
        self.call_room = call_room
        self.new_room = new_room
        self.caller = caller
        self.from_agent = from_agent
        self.to_agent = to_agent
        self.phase: Phase = "preparing"
        self.summary: SummaryCard | None = None
        self.reason: EndReason | None = None
        self.strategy: Strategy | None = None
        self.timeline: list[Transition] = [Transition("preparing", at)]
        self.version = 1

    @classmethod
    def restore(cls, snap: TransferSnapshot) -> Transfer:
        """The transfer as ``snap`` left it (another replica takes it over)."""
        t = cls(
            transfer_id=snap.transfer_id,
            mode=snap.mode,
            call_room=snap.call_room,
            new_room=snap.new_room,
            caller=snap.caller,
            from_agent=snap.from_agent,
            to_agent=snap.to_agent,
            at=snap.timeline[0].at if snap.timeline else 0.0,
        )
        t.phase, t.summary, t.reason, t.strategy = (
            snap.phase,
            snap.summary,
            snap.reason,
            snap.strategy,
        )
        t.timeline, t.version = list(snap.timeline), snap.version
        return t

    @property
    def active(self) -> bool:
        """True until the transfer completed, returned or ended."""
        return self.phase in ACTIVE

    def can(self, phase: Phase) -> bool:
        """Whether moving to ``phase`` now is legal."""
        if phase not in _NEXT[self.phase]:
            return False
        if phase == "consulting" and not consults(self.mode):
            return False
        return not (self.phase == "offering" and phase == "completing" and consults(self.mode))

    def advance(self, phase: Phase, *, at: float, note: str = "") -> Transition:
        """Move to ``phase`` (not an end with a reason: use :meth:`give_back` / :meth:`end`).

        Raises:
            TransferError: The transition is illegal from the current phase.
        """
        if phase in ("returned", "ended"):
            raise TransferError(f"use give_back() or end() to enter {phase}")
        return self._go(phase, at, note)

    def give_back(self, reason: EndReason, *, at: float) -> Transition:
        """End the transfer with the caller back with A.

        Raises:
            TransferError: Already over, or ``reason`` does not return a call.
        """
        if reason.code not in RETURN_REASONS:
            raise TransferError(f"a transfer cannot return to A because of {reason.code}")
        self._check("returned")
        self.reason = reason
        return self._go("returned", at, reason.code)

    def end(self, reason: EndReason, *, at: float) -> Transition:
        """End the transfer and the call (the caller is gone).

        Raises:
            TransferError: Already over, or ``reason`` does not end a call.
        """
        if reason.code not in END_REASONS:
            raise TransferError(f"a call does not end because of {reason.code}")
        self._check("ended")
        self.reason = reason
        return self._go("ended", at, reason.code)

    def set_summary(self, card: SummaryCard) -> None:
        """Attach (or replace, when A edits it) the summary card.

        Raises:
            TransferError: Cold transfers carry no summary, or the transfer is over.
        """
        if not summarizes(self.mode):
            raise TransferError("a cold transfer carries no summary")
        if not self.active:
            raise TransferError("the transfer is over")
        self.summary = card
        self.version += 1

    def set_strategy(self, strategy: Strategy) -> None:
        """Record how the parties are being joined (``move_caller`` or ``bring_agent``)."""
        self.strategy = strategy
        self.version += 1

    def _check(self, phase: Phase) -> None:
        if not self.can(phase):
            raise TransferError(
                f"illegal transfer step: {self.phase} -> {phase}",
                details={"transfer_id": self.transfer_id},
            )

    def _go(self, phase: Phase, at: float, note: str) -> Transition:
        self._check(phase)
        step = Transition(phase, at, note)
        self.phase = phase
        self.timeline.append(step)
        self.version += 1
        return step

    def snapshot(self) -> TransferSnapshot:
        """An immutable copy of the current state."""
        return TransferSnapshot(
            transfer_id=self.transfer_id,
            mode=self.mode,
            phase=self.phase,
            call_room=self.call_room,
            new_room=self.new_room,
            caller=self.caller,
            from_agent=self.from_agent,
            to_agent=self.to_agent,
            summary=self.summary,
            reason=self.reason,
            strategy=self.strategy,
            timeline=tuple(self.timeline),
            version=self.version,
        )
