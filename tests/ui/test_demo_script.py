"""The demo on any machine: a scripted call fills A's transcript and B's offer; windows fit.

The scripted call runs through the demo's real windows (``build_windows``)
against the session's LiveKit server: espeak-ng speaks the turns into the
caller's and Agent A's microphone sources, A's live transcript (faster-whisper)
writes them down, and a warm transfer to B carries a summary made of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from softphone.app import (
    FRAME_SIDE,
    FRAME_TOP,
    DemoScript,
    LiveKitAccess,
    _place,
    build_windows,
)
from softphone.config import load_settings
from softphone.media.scripted_voice import DEMO_CALL, render_script
from softphone.ui.views.agent_window import WIDE_MIN_W
from tests.ui.conftest import close_windows, wait_until

pytestmark = pytest.mark.ui

SCREENS = [(1366, 768), (1440, 900), (1600, 1000), (1920, 1080)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+|\d+", text.lower().replace(",", "")))


def _recall(said: str, heard: str) -> float:
    """The share of the words said that were heard."""
    words = _words(said)
    return len(words & _words(heard)) / max(1, len(words))


def test_render_script_lays_turns_one_after_another(tmp_path: Path) -> None:
    script = render_script(cache_dir=tmp_path)
    assert [line.party for line in script.lines] == [t.party for t in DEMO_CALL]
    for before, after in zip(script.lines, script.lines[1:], strict=False):
        assert after.start_s > before.end_s  # a pause: the other party answers in it
    caller, agent = script.tracks["caller"], script.tracks["agent"]
    assert len(caller) == len(agent)
    for line in script.lines:  # while one party speaks, the other's track is silent
        other = agent if line.party == "caller" else caller
        span = slice(int(line.start_s * 48000), int(line.end_s * 48000))
        assert not other[span].any()
    assert sorted(p.stat().st_mode & 0o777 for p in tmp_path.iterdir()) == [0o600] * len(
        {(t.party, t.text) for t in DEMO_CALL}
    )
    again = render_script(cache_dir=tmp_path)  # from the cache: the same samples
    assert (again.tracks["caller"] == caller).all()


@pytest.mark.parametrize("screen", SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def test_demo_windows_fit_the_screen_side_by_side(
    screen: tuple[int, int],
    qtbot: Any,
    run_ui: Callable[..., Any],
    access: LiveKitAccess,
    tmp_path: Path,
) -> None:
    width, height = screen

    async def scenario() -> list[tuple[int, int, int, int]]:
        async with contextlib.AsyncExitStack() as stack:
            settings = load_settings(
                {
                    "profile": "fit",
                    "home": tmp_path,
                    "live_transcript": False,
                    "livekit_url": access.url,
                    "livekit_api_key": access.api_key,
                    "livekit_api_secret": access.api_secret,
                },
                env={},
            )
            windows = await build_windows(settings, stack, demo=True, auto_join=False)
            try:
                for w in windows:
                    qtbot.addWidget(w)
                _place(windows, (0, 0, width, height))
                for w in windows:
                    w.show()
                await asyncio.sleep(0.2)  # resize events reach shown windows
                # Both agents go online as they open: let their lobby joins finish
                # (a room connect left in flight when its loop closes makes the
                # SDK abort the process later).
                await wait_until(
                    lambda: all(w.agent.lobby is not None for w in windows[1:]), 60, "lobbies"
                )
                frames = [
                    (
                        w.pos().x(),
                        w.pos().y(),
                        w.width() + 2 * FRAME_SIDE,
                        w.height() + FRAME_TOP + FRAME_SIDE,
                    )
                    for w in windows
                ]
                # Narrow agent windows stack the call panel above the tabs.
                for agent in windows[1:]:
                    wide = agent.width() >= WIDE_MIN_W
                    assert (agent.split.orientation().name == "Horizontal") == wide
                return frames
            finally:
                await close_windows(*windows)

    frames = run_ui(scenario(), 120)
    assert len(frames) == 3
    for x, y, w, h in frames:
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, (screen, frames)
    for i, (x, _y, w, _h) in enumerate(frames[:-1]):
        assert x + w <= frames[i + 1][0], f"windows {i} and {i + 1} overlap: {frames}"
    # Agent B (the last) reaches the right edge: the screen is used, not just fitted.
    assert frames[-1][0] + frames[-1][2] >= width - 10


@pytest.mark.timeout(900)
def test_scripted_demo_call_fills_a_transcript_and_b_offer(
    qtbot: Any,
    run_ui: Callable[..., Any],
    access: LiveKitAccess,
    tmp_path: Path,
) -> None:
    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            settings = load_settings(
                {
                    "profile": "scripted",
                    "home": tmp_path,
                    "live_transcript": True,
                    "livekit_url": access.url,
                    "livekit_api_key": access.api_key,
                    "livekit_api_secret": access.api_secret,
                    "lobby_room": "lobby-scripted-demo",
                },
                env={},
            )
            # "both": this machine has (PulseAudio) microphones, which "auto" would use.
            windows = await build_windows(settings, stack, demo=True, scripted="both")
            caller, a, b = windows
            try:
                for w in windows:
                    qtbot.addWidget(w)
                    w.show()

                def heard(identity: str) -> str:
                    return " ".join(s.text for s in a.agent.segments if s.speaker == identity)

                caller_id, agent_id = caller.controller.identity, a.controller.identity
                said_by_caller = " ".join(t.text for t in DEMO_CALL if t.party == "caller")
                said_by_agent = " ".join(t.text for t in DEMO_CALL if t.party == "agent")
                script = next(c for c in caller.closables if isinstance(c, DemoScript))

                def state() -> str:
                    return (
                        f"scripted: {script.parties}, playing: "
                        f"{script.call.playing if script.call else None}, "
                        f"transcriber: {a.agent.live is not None}, "
                        f"caller heard: {heard(caller_id)!r}, A heard: {heard(agent_id)!r}, "
                        f"A's log: {a.event_log.lines()[-12:]}"
                    )

                # The whole script (about 40 s) through a small Whisper on a busy machine.
                try:
                    await wait_until(
                        lambda: (
                            _recall(said_by_caller, heard(caller_id)) >= 0.6
                            and _recall(said_by_agent, heard(agent_id)) >= 0.6
                        ),
                        timeout_s=400,
                        what="the scripted call in A's live transcript",
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {state()}") from None
                shown = a.transcript.text.toPlainText()
                await wait_until(lambda: ("agent-b", "available") in a.transfer_panel.agents(), 60)
                a.transfer_panel.target.setText("agent-b")
                a.transfer_panel.start_btn.click()
                await wait_until(lambda: b.offer_panel.offer is not None, 90, "B's offer")
                offer = b.offer_panel.offer
                assert offer is not None
                result = {
                    "caller": heard(caller_id),
                    "agent": heard(agent_id),
                    "summary": offer.summary,
                    "offer_transcript": [s.text for s in offer.transcript],
                    "card_text": b.offer_panel.summary.toPlainText(),
                    "shown": shown,
                    "caller_note": caller.demo_note.text(),
                    "agent_note": a.demo_note.text(),
                }
                a.transfer_panel.cancel_btn.click()
                await wait_until(lambda: b.offer_panel.offer is None, 60, "offer withdrawn")
                return result
            finally:
                await close_windows(*windows)

    out = run_ui(scenario(), 880)
    summary = out["summary"]
    assert summary is not None
    assert summary.reason != "No speech was transcribed."
    assert "charged twice" in summary.reason.lower()
    assert any("58213" in f for f in summary.key_facts), summary.key_facts
    assert any("Maria Lopez" in f for f in summary.key_facts), summary.key_facts
    assert "58213" in out["card_text"]
    assert any("Maria" in t for t in out["offer_transcript"])
    assert "Maria Lopez" in out["shown"]  # A's window shows what A's transcriber heard
    assert "scripted caller" in out["caller_note"]
    assert "scripted agent" in out["agent_note"]
