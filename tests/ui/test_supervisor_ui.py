"""The supervisor hears the call silently, and a whisper reaches the agent but not the caller."""

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
from softphone.ui.views.supervisor_window import SupervisorWindow
from tests.ui.conftest import close_windows, place_call, wait_until

pytestmark = pytest.mark.ui


def _audio_from(window: Any) -> set[str]:
    call = window.controller.call
    if call is None:
        return set()
    return {
        p.identity
        for p in call.session.room.remote_participants.values()
        for pub in p.track_publications.values()
        if pub.track is not None and pub.subscribed
    }


def test_supervisor_listens_silently_and_whispers_to_the_agent_only(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Any],
    access: LiveKitAccess,
    room_name: str,
    play_tone: Callable[[float, float], Any],
) -> None:
    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            c_ctx = await open_context(
                ui_settings("sc", role="caller", identity="caller-s", room=room_name),
                access,
                stack,
            )
            a_ctx = await open_context(
                ui_settings("sa", role="agent", identity="agent-s", room=room_name),
                access,
                stack,
                transfer=c_ctx.transfer,
            )
            s_ctx = await open_context(
                ui_settings("ss", role="supervisor", identity="super-s"),
                access,
                stack,
                transfer=c_ctx.transfer,
            )
            caller = CallerWindow(context=c_ctx)
            agent = AgentWindow(context=a_ctx)
            sup = SupervisorWindow(context=s_ctx, refresh_s=0.5)
            windows = (caller, agent, sup)
            for w in windows:
                qtbot.addWidget(w)
                w.show()
            room = await place_call(
                c_ctx, caller="caller-s", agent="agent-s", windows=(caller, agent)
            )
            try:
                qtbot.mouseClick(caller.call_panel.join_btn, Qt.MouseButton.LeftButton)
                qtbot.mouseClick(agent.call_panel.join_btn, Qt.MouseButton.LeftButton)
                await wait_until(
                    lambda: caller.call_panel.in_call and agent.call_panel.in_call, 30, "call"
                )
                tone = play_tone(440.0, 12.0)
                feeding = asyncio.ensure_future(tone.start())

                def row_of_room() -> int:
                    for i in range(sup.rooms.rowCount()):
                        item = sup.rooms.item(i, 0)
                        if item is not None and item.text() == room:
                            return i
                    return -1

                await wait_until(lambda: row_of_room() >= 0, 15, "room listed")
                participants = sup.rooms.item(row_of_room(), 1).text()
                sup.rooms.selectRow(row_of_room())
                qtbot.mouseClick(sup.buttons["listen"], Qt.MouseButton.LeftButton)
                await wait_until(lambda: "Listening" in sup.status.text(), 20, "listening")
                monitor = sup.controller.legs["monitor"]
                await wait_until(
                    lambda: (
                        {"caller-s", "agent-s"}
                        <= {
                            p.identity
                            for p in monitor.session.room.remote_participants.values()
                            if any(pub.subscribed for pub in p.track_publications.values())
                        }
                    ),
                    20,
                    "supervisor subscribed to both",
                )
                heard = 0.0
                for _ in range(60):
                    heard = max(heard, sup.controller.devices.speaker.levels.level)
                    await asyncio.sleep(0.05)
                hidden = "super-s" not in caller.controller.call.session.remote_identities()

                qtbot.mouseClick(sup.buttons["whisper"], Qt.MouseButton.LeftButton)
                await wait_until(lambda: "Whispering" in sup.status.text(), 20, "whispering")
                await wait_until(
                    lambda: "super-s" in _audio_from(agent), 20, "agent hears the whisper"
                )
                await asyncio.sleep(2.0)  # give the caller every chance to (wrongly) get it
                caller_hears = "super-s" in _audio_from(caller)
                caller_sees = "super-s" in caller.controller.call.session.remote_identities()
                qtbot.mouseClick(sup.buttons["leave"], Qt.MouseButton.LeftButton)
                await wait_until(lambda: "monitor" not in sup.controller.legs, 10, "left")
                feeding.cancel()
                return {
                    "participants": participants,
                    "heard": heard,
                    "hidden_while_listening": hidden,
                    "caller_hears_whisper": caller_hears,
                    "caller_sees_supervisor": caller_sees,
                }
            finally:
                await close_windows(*windows)

    r = run_ui(scenario(), 120)
    assert "caller-s" in r["participants"] and "agent-s" in r["participants"]
    assert r["heard"] > 0.3, "the supervisor heard nothing"
    assert r["hidden_while_listening"], "a listening supervisor must be invisible"
    assert r["caller_sees_supervisor"], "whispering makes the supervisor visible (for the agent)"
    assert not r["caller_hears_whisper"], "the caller must not receive the whisper"
