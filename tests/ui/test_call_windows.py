"""An agent window and a caller window join a room, hear each other, and mute works."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from PySide6.QtCore import Qt

from softphone.app import LiveKitAccess, open_context
from softphone.server.token_minter import TokenMinter
from softphone.ui.views.agent_window import AgentWindow
from softphone.ui.views.caller_window import CallerWindow
from tests.audio_probe import tone_level
from tests.ui.conftest import close_windows, place_call, probe_listener, wait_until

pytestmark = pytest.mark.ui


def _names(panel: Any) -> list[str]:
    return [panel.participants.item(i).text() for i in range(panel.participants.count())]


def test_agent_and_caller_windows_talk_and_mute_silences_the_caller(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Any],
    access: LiveKitAccess,
    minter: TokenMinter,
    room_name: str,
    play_tone: Callable[[float, float], Any],
) -> None:
    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            caller_ctx = await open_context(
                ui_settings("c1", role="caller", identity="caller-1", room=room_name),
                access,
                stack,
            )
            agent_ctx = await open_context(
                ui_settings("a1", role="agent", identity="agent-1", room=room_name),
                access,
                stack,
                transfer=caller_ctx.transfer,
            )
            caller = CallerWindow(context=caller_ctx)
            agent = AgentWindow(context=agent_ctx)
            for w in (caller, agent):
                qtbot.addWidget(w)
                w.show()
            room = await place_call(
                caller_ctx, caller="caller-1", agent="agent-1", windows=(caller, agent)
            )
            try:
                qtbot.mouseClick(caller.call_panel.join_btn, Qt.MouseButton.LeftButton)
                qtbot.mouseClick(agent.call_panel.join_btn, Qt.MouseButton.LeftButton)
                await wait_until(
                    lambda: (
                        any("agent-1" in n for n in _names(caller.call_panel))
                        and any("caller-1" in n for n in _names(agent.call_panel))
                    ),
                    30,
                    "both windows in the room",
                )
                # A probe participant measures what the caller's window sends.
                listener = await probe_listener(
                    stack, access, minter, room, "probe", hears="caller-1"
                )
                tone = play_tone(440.0, 8.0)
                feeding = asyncio.ensure_future(tone.start())
                heard = {"agent": 0.0, "caller": 0.0}
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and min(heard.values()) < 0.3:
                    heard["agent"] = max(
                        heard["agent"], agent.controller.devices.speaker.levels.level
                    )
                    heard["caller"] = max(
                        heard["caller"], caller.controller.devices.speaker.levels.level
                    )
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                # The keyboard shortcut, as a user presses it in the focused window.
                caller.activateWindow()
                caller.call_panel.room_edit.setFocus()
                await wait_until(caller.isActiveWindow, 5, "caller window active")
                qtbot.keyClick(
                    caller.call_panel.room_edit, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier
                )
                muted_at = time.monotonic()
                await asyncio.sleep(2.0)
                feeding.cancel()
                return {
                    "room": room,
                    "heard": heard,
                    "muted_button": caller.call_panel.mute_btn.isChecked(),
                    "muted_at": muted_at,
                    "windows": listener.capture.windows(),
                    "caller_status": caller.call_panel.status.text(),
                    "log": agent.event_log.lines(),
                    "caller_log": caller.event_log.lines(),
                }
            finally:
                await close_windows(caller, agent)
                recordings.extend(agent_ctx.settings.recordings_path.rglob("*.wav"))

    recordings: list[Any] = []
    result = run_ui(scenario(), 90)
    # The agent's app recorded each speaker to its own file.
    names = {p.name for p in recordings}
    assert any("caller-1" in n for n in names) and any("agent-1" in n for n in names), names
    assert all(p.stat().st_size > 48000 for p in recordings), "recordings hold audio"
    assert result["heard"]["agent"] > 0.3, "the agent's speaker got no audio from the caller"
    assert result["heard"]["caller"] > 0.3, "the caller's speaker got no audio from the agent"
    assert result["muted_button"]
    assert "Connected to" in result["caller_status"]
    assert any(f"joined {result['room']}" in line for line in result["log"])
    assert any("mic" in line and "muted" in line for line in result["caller_log"])
    muted_at = result["muted_at"]
    before = [tone_level(w, 440.0) for t, w in result["windows"] if t < muted_at]
    after = [tone_level(w, 440.0) for t, w in result["windows"] if t > muted_at + 0.6]
    assert before and max(before) > 0.05, "the tone never reached the far end"
    assert not after or max(after) < 0.02, "audio still arrived after mute"
