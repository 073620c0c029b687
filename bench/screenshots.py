"""Render each window of the demo to PNG in docs/ (run under Xvfb or offscreen).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/screenshots.py

Starts the local LiveKit server, opens the demo's caller, Agent A, Agent B and
supervisor windows, lets the caller and Agent A talk, starts a warm transfer
so that Agent B shows the incoming offer, and grabs every window (and the
settings dialog, and Agent A in the dark theme) with ``QWidget.grab()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.app import build_windows
from softphone.config import load_settings
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


async def shoot(out: Path) -> list[Path]:
    """Open the demo windows, drive them to interesting states and save PNGs."""
    saved: list[Path] = []
    async with contextlib.AsyncExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="softphone-shots-")))
        settings = load_settings({"profile": "shots", "home": home, "live_transcript": False})
        windows = await build_windows(settings, stack, demo=True, supervisor=True)
        caller, a, b, sup = windows
        try:
            for w in windows:
                w.show()
            await wait_until(
                lambda: a.call_panel.in_call and caller.call_panel.in_call, 30, "call up"
            )
            await wait_until(
                lambda: a.agent.lobby is not None and b.agent.lobby is not None, 30, "lobby"
            )
            await wait_until(lambda: a.transfer_panel.agents(), 10, "directory")
            await asyncio.sleep(1.5)  # meters, participants and quality settle
            sup.refresh()
            await wait_until(lambda: sup.rooms.rowCount() > 0, 10, "rooms")
            sup.rooms.selectRow(0)
            sup.buttons["listen"].click()
            await wait_until(lambda: "Listening" in sup.status.text(), 15, "listening")
            a.transcript.set_segments([])
            a.tabs.setCurrentWidget(a.transfer_panel)
            a.transfer_panel.target.setText("agent-b")
            a.transfer_panel.start_btn.click()
            await wait_until(lambda: b.offer_panel.offer is not None, 30, "offer")
            await asyncio.sleep(1.0)

            def grab(widget: object, name: str) -> None:
                path = out / name
                widget.grab().save(str(path))  # type: ignore[attr-defined]
                saved.append(path)

            grab(caller, "ui-caller.png")
            grab(a, "ui-agent-a-transfer.png")
            grab(b, "ui-agent-b-offer.png")
            grab(sup, "ui-supervisor.png")
            dialog = SettingsDialog(a.context.settings, a)
            dialog.show()
            await asyncio.sleep(0.3)
            grab(dialog, "ui-settings.png")
            dialog.close()
            apply_theme(application(), "dark")
            await asyncio.sleep(0.3)
            grab(a, "ui-agent-a-dark.png")
            apply_theme(application(), "light")
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
