"""The agent's window when the service or the media connection goes away mid-call.

- The backend killed with SIGKILL while B's phone rings: A's window says the
  service was lost and that the caller is back, its transfer panel is clear,
  its mic is live (the caller hears A again, even though A had pressed mute
  while the caller waited), and B's window says why the offer went away.
  The apps reach the backend through a list of URLs whose first one never
  answers, so every request also goes through the replica fallback.
- The LiveKit server restarted under a call: A's event log notes how long
  there was no audio, and the transcript gets its marker.

Real parts throughout: the LiveKit server, the backend under uvicorn (its own
Redis), the windows' own RTC sessions and PulseAudio devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import Qt

from softphone.app import LiveKitAccess, open_context
from softphone.client.agent_controller import GAP_SPEAKER
from softphone.client.context import AppContext, remote_transfer_service
from softphone.client.lobby import Withdrawn
from softphone.config import Settings
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.session import RtcSession
from softphone.store.history import HistoryStore
from softphone.ui.views.agent_window import AgentWindow, withdrawn_text
from softphone.ui.views.caller_window import CallerWindow
from tests.audio_probe import Listener, tone_level
from tests.transfer.backend_process import BackendProcess
from tests.ui.conftest import close_windows, place_call, wait_until

pytestmark = pytest.mark.ui

# A's voice, as the test sink plays it into every microphone.
VOICE_HZ = 523.0
# Share of 10 ms windows that must carry the tone for it to count as heard.
HEARD = 0.5
# Where the lost-service screenshot goes, when asked for (run under Xvfb).
SHOTS_ENV = "SOFTPHONE_UI_SHOTS"


def _click(qtbot: Any, button: Any) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


async def remote_context(settings: Settings, stack: contextlib.AsyncExitStack) -> AppContext:
    """A window's services in remote mode, over every backend URL of ``settings``."""
    settings.ensure_dirs()
    history = await stack.enter_async_context(HistoryStore(settings.history_path))
    service = await stack.enter_async_context(remote_transfer_service(settings))
    context = AppContext(settings=settings, url="", history=history, transfer=service)
    context.url = (await context.service_info()).livekit_url
    return context


async def mic_tone_share(session: RtcSession, identity: str, seconds: float = 1.0) -> float:
    """Share of 10 ms windows of ``identity``'s microphone, as ``session`` receives it,
    that carry :data:`VOICE_HZ` (0.0 when nothing arrives: a muted track sends nothing)."""
    audio = await session.wait_for_audio(identity, timeout_s=15.0, name="microphone")
    listener = Listener(audio)
    try:
        await asyncio.sleep(seconds)
    finally:
        await listener.aclose()
    windows = [w for _, w in listener.capture.windows()]
    if not windows:
        return 0.0
    return float(np.mean([tone_level(w, VOICE_HZ) > 0.05 for w in windows]))


async def heard_within(session: RtcSession, identity: str, timeout_s: float) -> float:
    """The best share measured, second by second, until it counts as heard or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    best = 0.0
    while best < HEARD and loop.time() < deadline:
        best = max(best, await mic_tone_share(session, identity))
    return best


def test_withdrawn_offers_say_why_in_words() -> None:
    """The bare reason code never reaches the user; the lobby's message does."""
    by_service = withdrawn_text(Withdrawn("t1", "caller_left", "the offer was withdrawn"))
    assert by_service == "The offer was withdrawn (the caller hung up)."
    lost = withdrawn_text(
        Withdrawn(
            "t2",
            "unreachable",
            "the call service has not answered for 3 s: the offer can no longer be accepted",
        )
    )
    assert lost == (
        "The call service has not answered for 3 s: the offer can no longer be accepted."
    )
    assert "unreachable" not in lost
    assert withdrawn_text(Withdrawn("t3", "consulting", "")) == "The offer was withdrawn."


def test_agent_window_takes_the_caller_back_when_the_service_dies(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Settings],
    livekit_server: LocalLiveKitServer,
    room_name: str,
    tmp_path: Path,
    play_tone: Callable[[float, float], Any],
) -> None:
    lobby = f"lobby-{room_name}"
    a_id, b_id, caller_id = "agent-a-1", "agent-b-1", "caller-1"
    workdir = tmp_path / "backend"
    workdir.mkdir()

    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            backend = await stack.enter_async_context(
                BackendProcess(
                    livekit_server=livekit_server,
                    workdir=workdir,
                    lobby=lobby,
                    offer_timeout_s=120.0,  # B's phone must still ring when the backend dies
                )
            )
            # Nothing listens on the first URL: every request moves on to the backend.
            urls = f"http://127.0.0.1:{free_port()}, {backend.url}"

            async def context(profile: str, role: str, identity: str) -> AppContext:
                settings = ui_settings(
                    profile,
                    role=role,
                    identity=identity,
                    lobby_room=lobby,
                    backend_url=urls,
                    backend_api_key=backend.keys[identity],
                )
                return await remote_context(settings, stack)

            a_ctx = await context("la", "agent", a_id)
            b_ctx = await context("lb", "agent", b_id)
            c_ctx = await context("lc", "caller", caller_id)
            caller = CallerWindow(context=c_ctx)
            a = AgentWindow(context=a_ctx, title="Agent A")
            b = AgentWindow(context=b_ctx, title="Agent B")
            windows = (caller, a, b)
            for w in windows:
                qtbot.addWidget(w)
                w.show()
            tone = play_tone(VOICE_HZ, 120.0)
            feeding = asyncio.ensure_future(tone.start())
            try:
                await place_call(c_ctx, caller=caller_id, agent=a_id, windows=(caller, a))
                a.go_online()
                b.go_online()
                _click(qtbot, caller.call_panel.join_btn)
                _click(qtbot, a.call_panel.join_btn)
                await wait_until(
                    lambda: (
                        a.call_panel.in_call
                        and caller.call_panel.in_call
                        and a.agent.caller_identity() == caller_id
                    ),
                    45,
                    "caller and A in the call",
                )
                assert caller.controller.call is not None
                caller_session = caller.controller.call.session
                assert await heard_within(caller_session, a_id, 20) >= HEARD, "no A at first"
                await wait_until(
                    lambda: (b_id, "available") in a.transfer_panel.agents(),
                    30,
                    "B in A's directory",
                )
                a.tabs.setCurrentWidget(a.transfer_panel)
                a.transfer_panel.target.setText(b_id)
                _click(qtbot, a.transfer_panel.start_btn)
                await wait_until(lambda: b.offer_panel.offer is not None, 45, "offer at B")
                await wait_until(lambda: caller.on_hold, 20, "hold banner at the caller")
                assert a.transfer_panel.snapshot is not None
                assert a.transfer_panel.snapshot.phase == "offering"
                # A mutes while the caller waits; the caller hears nothing of A anyway.
                _click(qtbot, a.call_panel.mute_btn)
                assert a.controller.muted
                silent_share = await mic_tone_share(caller_session, a_id)

                backend.kill()
                killed = time.monotonic()
                await wait_until(
                    lambda: (
                        a.transfer_panel.snapshot is None
                        and "has not answered" in a.messages.label.text()
                    ),
                    45,
                    "A's window to say the service is lost",
                )
                print(
                    f"\nA's window: service lost, caller back {time.monotonic() - killed:.2f} s after the kill"
                )
                await wait_until(lambda: not caller.on_hold, 20, "the caller off hold")
                await wait_until(
                    lambda: b.offer_panel.offer is None, 45, "B's phone to stop ringing"
                )
                a_session = a.controller.call.session if a.controller.call else None
                # The caller is still in the call room it was in before the transfer.
                assert caller.controller.call is not None
                assert caller.controller.call.session is caller_session
                heard_share = await heard_within(caller_session, a_id, 20)
                shot = a.grab()
                shot_dir = os.environ.get(SHOTS_ENV)
                if shot_dir:
                    shot.save(str(Path(shot_dir) / "agent_lost.png"))
                return {
                    "a_message": a.messages.label.text(),
                    "a_level": a.messages.property("level"),
                    "a_phase": a.transfer_panel.phase.text(),
                    "a_note": a.transfer_panel.reason.text(),
                    "a_start_enabled": a.transfer_panel.start_btn.isEnabled(),
                    "a_cancel_enabled": a.transfer_panel.cancel_btn.isEnabled(),
                    "a_in_call": a.call_panel.in_call,
                    "a_leave_enabled": a.call_panel.leave_btn.isEnabled(),
                    "a_mute_checked": a.call_panel.mute_btn.isChecked(),
                    "a_muted": a.controller.muted,
                    "a_session_muted": a_session.muted if a_session else None,
                    "a_log": a.event_log.lines(),
                    "b_headline": b.offer_panel.headline.text(),
                    "b_accept_enabled": b.offer_panel.accept_btn.isEnabled(),
                    "b_log": b.event_log.lines(),
                    "silent_share": silent_share,
                    "heard_share": heard_share,
                    "shot_null": shot.isNull(),
                }
            finally:
                tone.stop()
                feeding.cancel()
                await close_windows(*windows)

    r = run_ui(scenario(), 280)
    # A's window: the lost service said prominently, and that the caller is back.
    assert "has not answered" in r["a_message"] and "back with you" in r["a_message"]
    assert "microphone is on" in r["a_message"], "A had muted: the window says it unmuted"
    assert r["a_level"] == "warning"
    # The transfer panel is clear and ready for the next transfer.
    assert r["a_phase"] == "No transfer"
    assert "transfer was dropped" in r["a_note"]
    assert r["a_start_enabled"] and not r["a_cancel_enabled"]
    # The call controls are those of a normal call, unmuted, and the caller hears A.
    assert r["a_in_call"] and r["a_leave_enabled"]
    assert not r["a_mute_checked"] and not r["a_muted"] and r["a_session_muted"] is False
    assert r["silent_share"] < 0.1, "A's mic reached the caller on hold"
    assert r["heard_share"] >= HEARD, "the caller does not hear A after the service was lost"
    assert any("has not answered" in line for line in r["a_log"])
    # B's window: the offer is gone, with the reason in words.
    assert "can no longer be accepted" in r["b_headline"], r["b_headline"]
    assert "unreachable" not in r["b_headline"]
    assert not r["b_accept_enabled"]
    assert any("offer dropped" in line and "no longer" in line for line in r["b_log"])
    assert not r["shot_null"]


def test_agent_window_logs_the_gap_when_livekit_restarts(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Settings],
    room_name: str,
    tmp_path: Path,
) -> None:
    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            # A server of this test's own: restarting the session's would cut every test.
            server = await stack.enter_async_context(
                LocalLiveKitServer(
                    binary=await asyncio.to_thread(ensure_server_binary),
                    log_path=tmp_path / "livekit-gap.log",
                )
            )
            access = LiveKitAccess(
                url=server.url, api_key=server.api_key, api_secret=server.api_secret
            )

            def settings(profile: str, role: str, identity: str) -> Settings:
                return ui_settings(
                    profile, role=role, identity=identity, lobby_room=f"lobby-{room_name}"
                )

            a_ctx = await open_context(settings("ga", "agent", "agent-g"), access, stack)
            c_ctx = await open_context(
                settings("gc", "caller", "caller-g"), access, stack, transfer=a_ctx.transfer
            )
            caller = CallerWindow(context=c_ctx)
            a = AgentWindow(context=a_ctx, title="Agent A")
            for w in (caller, a):
                qtbot.addWidget(w)
                w.show()
            try:
                await place_call(c_ctx, caller="caller-g", agent="agent-g", windows=(caller, a))
                _click(qtbot, caller.call_panel.join_btn)
                _click(qtbot, a.call_panel.join_btn)
                await wait_until(
                    lambda: (
                        a.call_panel.in_call
                        and a.controller.call is not None
                        and "caller-g" in a.controller.call.session.remote_identities()
                    ),
                    45,
                    "caller and A in the call",
                )
                await asyncio.sleep(1.0)
                await server.restart(kill=True, down_s=1.0)
                await wait_until(lambda: a.agent.gaps, 60, "A's call back after the restart")
                await wait_until(
                    lambda: any("no audio for" in line for line in a.event_log.lines()),
                    10,
                    "the gap in A's event log",
                )
                call = a.controller.call
                return {
                    "gaps": list(a.agent.gaps),
                    "log": a.event_log.lines(),
                    "markers": [s for s in a.transcript.segments() if s.speaker == GAP_SPEAKER],
                    "transcript": a.transcript.text.toPlainText(),
                    "in_call": call is not None,
                }
            finally:
                await close_windows(caller, a)

    r = run_ui(scenario(), 200)
    gap = r["gaps"][0]
    print(
        f"\nA's window logged a gap of {gap.end_s - gap.start_s:.2f} s (rejoined: {gap.rejoined})"
    )
    assert gap.leg == "call" and gap.end_s > gap.start_s
    line = next(line for line in r["log"] if "no audio for" in line)
    assert f"no audio for {gap.end_s - gap.start_s:.1f} s: connection lost" in line
    assert ("rejoined the room" if gap.rejoined else "reconnected") in line
    assert [m.text for m in r["markers"]][:1] == [
        f"[no audio for {gap.end_s - gap.start_s:.1f} s: connection lost]"
    ]
    assert "connection lost" in r["transcript"]
    assert r["in_call"]
