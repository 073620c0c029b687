"""The transfer state machine: legal and illegal steps, reasons, snapshots."""

from __future__ import annotations

import pytest

from softphone.domain.summary import SummaryCard
from softphone.domain.transfer import EndReason, Mode, Transfer, TransferSnapshot
from softphone.errors import TransferError, ValidationError

pytestmark = pytest.mark.unit


def make(mode: Mode = "warm") -> Transfer:
    return Transfer(
        transfer_id="t1",
        mode=mode,
        call_room="r1",
        new_room="r2",
        caller="caller",
        from_agent="a",
        to_agent="b",
        at=100.0,
    )


def test_warm_path_is_timestamped_in_order() -> None:
    t = make()
    for i, phase in enumerate(["offering", "consulting", "completing", "completed"], start=1):
        t.advance(phase, at=100.0 + i)  # type: ignore[arg-type]
    assert [(s.phase, s.at) for s in t.timeline] == [
        ("preparing", 100.0),
        ("offering", 101.0),
        ("consulting", 102.0),
        ("completing", 103.0),
        ("completed", 104.0),
    ]
    assert not t.active and t.reason is None
    assert t.version == 5


@pytest.mark.parametrize("mode", ["direct", "cold"])
def test_modes_without_consult_skip_it(mode: Mode) -> None:
    t = make(mode)
    t.advance("offering", at=1)
    assert not t.can("consulting")
    with pytest.raises(TransferError, match="offering -> consulting"):
        t.advance("consulting", at=2)
    t.advance("completing", at=2)
    assert t.phase == "completing"


def test_warm_cannot_skip_the_consult() -> None:
    t = make("warm_intro")
    t.advance("offering", at=1)
    with pytest.raises(TransferError):
        t.advance("completing", at=2)


@pytest.mark.parametrize(
    ("start", "target"),
    [("preparing", "consulting"), ("preparing", "completed"), ("offering", "completed")],
)
def test_illegal_steps_are_refused_and_change_nothing(start: str, target: str) -> None:
    t = make()
    if start == "offering":
        t.advance("offering", at=1)
    before = t.snapshot()
    with pytest.raises(TransferError, match="illegal transfer step"):
        t.advance(target, at=5)  # type: ignore[arg-type]
    assert t.snapshot() == before


def test_declined_returns_with_b_text() -> None:
    t = make()
    t.advance("offering", at=1)
    t.give_back(EndReason("declined", "on another call"), at=2)
    assert t.phase == "returned"
    assert t.reason == EndReason("declined", "on another call")
    assert t.reason.describe() == "the agent declined: on another call"
    assert t.timeline[-1].note == "declined"


def test_ends_are_final() -> None:
    t = make()
    t.end(EndReason("caller_left"), at=1)
    for phase in ("offering", "consulting", "completing", "completed"):
        assert not t.can(phase)  # type: ignore[arg-type]
    with pytest.raises(TransferError):
        t.give_back(EndReason("cancelled"), at=2)
    with pytest.raises(TransferError):
        t.end(EndReason("caller_left"), at=2)


def test_reasons_must_fit_the_end() -> None:
    t = make()
    with pytest.raises(TransferError):
        t.give_back(EndReason("caller_left"), at=1)
    with pytest.raises(TransferError):
        t.end(EndReason("declined"), at=1)
    with pytest.raises(TransferError):
        t.advance("returned", at=1)
    assert t.phase == "preparing"


def test_bad_construction_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="oneself"):
        Transfer(
            transfer_id="x",
            mode="warm",
            call_room="r1",
            new_room="r2",
            caller="c",
            from_agent="a",
            to_agent="a",
            at=0,
        )
    with pytest.raises(ValidationError, match="mode"):
        Transfer(
            transfer_id="x",
            mode="hot",
            call_room="r1",
            new_room="r2",  # type: ignore[arg-type]
            caller="c",
            from_agent="a",
            to_agent="b",
            at=0,
        )


def test_cold_carries_no_summary_and_fallback_is_kept() -> None:
    with pytest.raises(TransferError):
        make("cold").set_summary(SummaryCard(reason="x"))
    t = make()
    t.set_summary(SummaryCard(reason="refund", fallback=True, source="offline"))
    assert t.snapshot().summary is not None and t.snapshot().summary.fallback


def test_snapshot_round_trips_through_json_shape() -> None:
    t = make()
    t.set_summary(SummaryCard(reason="refund", key_facts=("order 1",)))
    t.advance("offering", at=1)
    t.set_strategy("move_caller")
    t.give_back(EndReason("no_answer"), at=2)
    snap = t.snapshot()
    assert TransferSnapshot.from_dict(snap.to_dict()) == snap
    with pytest.raises(ValidationError):
        TransferSnapshot.from_dict({**snap.to_dict(), "phase": "flying"})
    with pytest.raises(ValidationError):
        TransferSnapshot.from_dict({"transfer_id": "x"})
