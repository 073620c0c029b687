"""Clean audio in the app: on by default, switchable in settings, shown in the call panel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox

from softphone.app import LiveKitAccess, open_context
from softphone.config import load_settings
from softphone.media.processing import ProcessingOptions
from softphone.ui.views.agent_window import AgentWindow
from softphone.ui.views.settings_dialog import SettingsDialog

# The UI tests' fixtures: a private PulseAudio, a qasync loop per scenario, settings per test.
from tests.ui.conftest import (  # noqa: F401
    access,
    close_windows,
    pulse_audio,
    run_ui,
    ui_settings,
    wait_until,
)

pytestmark = pytest.mark.ui

SWITCHES = ("echo_cancellation", "noise_suppression", "high_pass", "auto_gain")


def test_clean_audio_is_on_by_default_switched_in_settings_and_shown_in_the_call_panel(
    qtbot: Any,
    run_ui: Callable[..., Any],  # noqa: F811
    ui_settings: Callable[..., Any],  # noqa: F811
    access: LiveKitAccess,  # noqa: F811
) -> None:
    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            # The defaults, not the UI suite's (which turn the level-changing processing off).
            defaults = {"auto_gain": True, "noise_suppression": True, "echo_cancellation": True}
            ctx = await open_context(ui_settings("clean", role="agent", **defaults), access, stack)
            w = AgentWindow(context=ctx)
            qtbot.addWidget(w)
            w.show()
            devices = w.controller.devices
            panel = w.call_panel
            try:
                await w.controller.start()
                assert devices.mic is not None and devices.mic.device_name is not None
                # Processing runs on the captured audio: frames go through it.
                start = devices.processor.frames
                await wait_until(lambda: devices.processor.frames > start + 50, 20, "processing")
                default = (devices.processing, panel.processing_state.text())

                dialog = SettingsDialog(ctx.settings, w)
                qtbot.addWidget(dialog)
                boxes = {name: dialog.editors[name] for name in SWITCHES}
                shown = {
                    name: isinstance(b, QCheckBox) and b.isChecked() for name, b in boxes.items()
                }
                for name in ("noise_suppression", "auto_gain"):
                    box = boxes[name]
                    assert isinstance(box, QCheckBox)
                    box.setChecked(False)
                qtbot.mouseClick(dialog.save_btn, Qt.MouseButton.LeftButton)
                assert dialog.saved is not None
                ctx.settings = dialog.saved  # as the window does after the dialog
                await wait_until(
                    lambda: not devices.processing.noise_suppression, 10, "settings applied"
                )
                some = (devices.processing, panel.processing_state.text())

                dialog = SettingsDialog(ctx.settings, w)
                qtbot.addWidget(dialog)
                for name in SWITCHES:
                    box = dialog.editors[name]
                    assert isinstance(box, QCheckBox)
                    box.setChecked(False)
                qtbot.mouseClick(dialog.save_btn, Qt.MouseButton.LeftButton)
                assert dialog.saved is not None
                ctx.settings = dialog.saved
                await wait_until(lambda: not devices.processing.any_on, 10, "all off")
                frames_off = devices.processor.frames
                await asyncio.sleep(0.5)  # blocks keep coming from the microphone
                return {
                    "default": default,
                    "shown": shown,
                    "some": some,
                    "off": (devices.processing, panel.processing_state.text()),
                    "frames_off": (frames_off, devices.processor.frames),
                    "log": w.event_log.lines(),
                }
            finally:
                await close_windows(w)

    r = run_ui(scenario(), 60)
    assert r["default"] == (ProcessingOptions(), "On: echo cancel, noise, high-pass, gain")
    assert r["shown"] == dict.fromkeys(SWITCHES, True), "the dialog must show them all on"
    assert r["some"] == (
        ProcessingOptions(True, False, True, False),
        "On: echo cancel, high-pass",
    )
    assert r["off"] == (ProcessingOptions.off(), "Off: the microphone is sent as captured")
    before, after = r["frames_off"]
    assert after == before, "processing ran while switched off"
    assert any("clean audio: echo cancel, high-pass" in line for line in r["log"]), r["log"]
    saved = load_settings({"profile": "clean", "home": ui_settings("x").home}, env={})
    assert not any(getattr(saved, name) for name in SWITCHES), "the choice was not remembered"
