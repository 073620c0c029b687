"""Render each window of the demo to PNG in docs/ (run under Xvfb or offscreen).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/screenshots.py

Starts the local LiveKit server and opens the demo's caller, Agent A, Agent B
(and supervisor) windows as ``softphone demo --scripted both`` does: the
scripted support call is spoken into the caller's and A's microphones, and
A's live transcript (faster-whisper) writes it down. Once the script is
over, it grabs A with its live transcript (light and dark theme), the whole
screen (under Xvfb), the supervisor listening, then starts a warm transfer
and grabs the caller on hold, A transferring and B's offer with the summary
made of the call (also at 200 %), and the settings dialog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QWidget

from softphone.app import DemoScript, _place, build_windows
from softphone.config import load_settings
from softphone.media.scripted_voice import DEMO_CALL
from softphone.ui.shell import application, close_window_resources, run_qt
from softphone.ui.theme import apply_theme
from softphone.ui.views.settings_dialog import SettingsDialog

DOCS = Path(__file__).resolve().parents[1] / "docs"


async def wait_until(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``cond`` on the loop until it is true."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def _recall(said: str, heard: str) -> float:
    words = set(re.findall(r"[a-z]+", said.lower()))
    return len(words & set(re.findall(r"[a-z]+", heard.lower()))) / max(1, len(words))


def scaled(widget: QWidget, scale: float) -> QPixmap:
    """``widget`` painted at ``scale`` times its size, as a screen at that scaling shows it."""
    pixmap = QPixmap(widget.size() * scale)
    pixmap.setDevicePixelRatio(scale)
    pixmap.fill(Qt.GlobalColor.transparent)
    widget.render(pixmap)
    return pixmap


async def shoot(out: Path) -> list[Path]:
    """Open the demo windows, let the scripted call play, drive a transfer and save PNGs."""
    saved: list[Path] = []

    def grab(widget: QWidget, name: str, scale: float = 1.0) -> None:
        path = out / name
        (widget.grab() if scale == 1.0 else scaled(widget, scale)).save(str(path))
        saved.append(path)

    async with contextlib.AsyncExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softphone-shots-")))
        settings = load_settings({"profile": "shots", "home": home, "live_transcript": True})
        windows = await build_windows(settings, stack, demo=True, supervisor=True, scripted="both")
        caller, a, b, sup = windows
        _place([caller, a, b])  # the three of a plain demo; the supervisor comes later
        script = next(c for c in caller.closables if isinstance(c, DemoScript))
        try:
            for w in (caller, a, b):
                w.show()
            await wait_until(
                lambda: a.call_panel.in_call and caller.call_panel.in_call, 60, "call up"
            )
            await wait_until(
                lambda: a.agent.lobby is not None and b.agent.lobby is not None, 30, "lobby"
            )
            a.tabs.setCurrentWidget(a.transcript)
            await wait_until(lambda: script.call is not None, 180, "the scripted call")
            playing = script.call
            assert playing is not None
            await wait_until(lambda: not playing.playing, 120, "the end of the script")
            said = " ".join(t.text for t in DEMO_CALL)

            def heard() -> str:
                return " ".join(s.text for s in a.agent.segments)

            # The last turn leaves the transcriber a moment after it is said.
            await wait_until(lambda: _recall(said, heard()) >= 0.9, 240, "the transcript")
            await asyncio.sleep(2.0)
            grab(a, "ui-agent-a-transcript.png")
            apply_theme(application(), "dark")
            await asyncio.sleep(0.3)
            grab(a, "ui-agent-a-dark.png")
            apply_theme(application(), "light")
            await asyncio.sleep(0.3)
            screen = application().primaryScreen()
            if application().platformName() == "xcb":  # the whole screen, as a user sees it
                screen.grabWindow(0).save(str(out / "ui-demo-screen.png"))
                saved.append(out / "ui-demo-screen.png")

            sup.show()
            await asyncio.sleep(1.0)
            sup.refresh()
            await wait_until(lambda: sup.rooms.rowCount() > 0, 10, "rooms")
            sup.rooms.selectRow(0)
            sup.buttons["listen"].click()
            await wait_until(lambda: "Listening" in sup.status.text(), 15, "listening")
            await asyncio.sleep(1.0)
            grab(sup, "ui-supervisor.png")

            await wait_until(lambda: a.transfer_panel.agents(), 10, "directory")
            a.tabs.setCurrentWidget(a.transfer_panel)
            a.transfer_panel.target.setText("agent-b")
            a.transfer_panel.start_btn.click()
            await wait_until(lambda: b.offer_panel.offer is not None, 60, "offer")
            await wait_until(lambda: caller.on_hold, 20, "caller on hold")
            await asyncio.sleep(1.5)
            grab(caller, "ui-caller.png")
            grab(a, "ui-agent-a-transfer.png")
            grab(b, "ui-agent-b-offer.png")
            grab(b, "ui-agent-b-offer-200pct.png", scale=2.0)
            dialog = SettingsDialog(a.context.settings, a)
            dialog.show()
            await asyncio.sleep(0.3)
            grab(dialog, "ui-settings.png")
            dialog.close()
            a.transfer_panel.cancel_btn.click()
            await asyncio.sleep(1.0)
        finally:
            for w in windows:
                w.close()
            for w in windows:
                await close_window_resources(w)
    return saved


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: list[Path] = []

    async def run() -> None:
        result.extend(await shoot(args.out))

    run_qt(run)
    for p in result:
        print(p)


if __name__ == "__main__":
    main()
