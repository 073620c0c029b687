"""A warm transfer clicked through three windows: caller and B end up talking, A idle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from PySide6.QtCore import Qt

from softphone.app import LiveKitAccess, open_context
from softphone.ui.views.agent_window import AgentWindow
from softphone.ui.views.caller_window import CallerWindow
from tests.ui.conftest import close_windows, place_call, wait_until

pytestmark = pytest.mark.ui


def _click(qtbot: Any, button: Any) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_warm_transfer_by_clicking_through_three_windows(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Any],
    access: LiveKitAccess,
    room_name: str,
) -> None:
    lobby = f"lobby-{room_name}"

    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:

            def settings(profile: str, role: str, identity: str) -> Any:
                return ui_settings(
                    profile, role=role, identity=identity, room=room_name, lobby_room=lobby
                )

            a_ctx = await open_context(settings("ta", "agent", "agent-a"), access, stack)
            b_ctx = await open_context(
                settings("tb", "agent", "agent-b"), access, stack, transfer=a_ctx.transfer
            )
            c_ctx = await open_context(
                settings("tc", "caller", "caller-t"), access, stack, transfer=a_ctx.transfer
            )
            caller = CallerWindow(context=c_ctx)
            a = AgentWindow(context=a_ctx, title="Agent A")
            b = AgentWindow(context=b_ctx, title="Agent B")
            windows = (caller, a, b)
            for w in windows:
                qtbot.addWidget(w)
                w.show()
            await place_call(c_ctx, caller="caller-t", agent="agent-a", windows=(caller, a))
            try:
                a.go_online()
                b.go_online()
                _click(qtbot, caller.call_panel.join_btn)
                _click(qtbot, a.call_panel.join_btn)
                await wait_until(
                    lambda: (
                        a.call_panel.in_call
                        and caller.call_panel.in_call
                        and a.agent.caller_identity() == "caller-t"
                    ),
                    30,
                    "caller and A in the call",
                )
                # A picks B from the live directory (presence shown) and starts.
                await wait_until(
                    lambda: ("agent-b", "available") in a.transfer_panel.agents(),
                    20,
                    "B in A's directory",
                )
                directory = a.transfer_panel.directory
                directory.setCurrentRow(0)
                assert a.transfer_panel.target.text() == "agent-b"
                _click(qtbot, a.transfer_panel.start_btn)
                # B's window rings with the summary card; B accepts.
                await wait_until(lambda: b.offer_panel.offer is not None, 30, "offer at B")
                offered_summary = b.offer_panel.summary.toPlainText()
                await wait_until(lambda: caller.on_hold, 15, "hold banner at the caller")
                _click(qtbot, b.offer_panel.accept_btn)
                await wait_until(
                    lambda: (
                        a.transfer_panel.snapshot is not None
                        and a.transfer_panel.snapshot.phase == "consulting"
                    ),
                    30,
                    "consulting",
                )
                new_room = a.transfer_panel.snapshot.new_room
                await wait_until(
                    lambda: "consult" in a.controller.legs, 20, "A's consult leg in R2"
                )
                # The consult leg is part of the call: B's voice is recorded there.
                await wait_until(
                    lambda: a.agent.consult_recorder is not None, 20, "consult recording"
                )
                await asyncio.sleep(1.0)
                a_call_id = a.controller.call_id
                _click(qtbot, a.transfer_panel.complete_btn)
                await wait_until(
                    lambda: (
                        caller.controller.call is not None
                        and caller.controller.call.room_name == new_room
                        and b.controller.call is not None
                        and b.controller.call.room_name == new_room
                        and a.controller.call is None
                        and not a.controller.legs
                        and a.transfer_panel.snapshot.phase == "completed"
                    ),
                    30,
                    "caller and B together in R2, A gone",
                )
                # The service removed A from R2 as the transfer completed; the
                # caller's app learns that from LiveKit, on a path of its own,
                # a moment after A's app sees "completed".
                await wait_until(
                    lambda: (
                        "caller-t" in b.controller.call.session.remote_identities()
                        and "agent-b" in caller.controller.call.session.remote_identities()
                        and "agent-a" not in caller.controller.call.session.remote_identities()
                    ),
                    20,
                    "caller and B see each other, and A gone",
                )
                detail = await a_ctx.history.get_call(a_call_id) if a_call_id else None
                return {
                    "recordings": [(r.speaker, r.leg) for r in detail.recordings] if detail else [],
                    "summary": offered_summary,
                    "caller_remote": caller.controller.call.session.remote_identities(),
                    "b_remote": b.controller.call.session.remote_identities(),
                    "a_in_call": a.controller.call is not None,
                    "a_legs": dict(a.controller.legs),
                    "a_phase": a.transfer_panel.phase.text(),
                    "a_result": a.transfer_panel.reason.text(),
                    "on_hold": caller.on_hold,
                    "a_errors": a.messages.label.text() if a.messages.isVisible() else "",
                }
            finally:
                await close_windows(*windows)

    r = run_ui(scenario(), 150)
    assert "Call summary" in r["summary"]
    assert "agent-b" in r["caller_remote"] and "agent-a" not in r["caller_remote"]
    assert "caller-t" in r["b_remote"]
    assert not r["a_in_call"] and not r["a_legs"], "A should be idle"
    assert "completed" in r["a_phase"].lower()
    assert "now with agent-b" in r["a_result"]
    assert not r["on_hold"]
    assert ("agent-b", "consult") in r["recordings"], r["recordings"]
    assert ("caller-t", "call") in r["recordings"]
    assert r["a_errors"] == ""
