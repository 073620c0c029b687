"""Settings per profile, device lists from PortAudio, and bad input rejected with a message."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import sounddevice as sd
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QLineEdit

from softphone.app import LiveKitAccess, open_context
from softphone.config import load_settings
from softphone.ui.views.agent_window import AgentWindow
from softphone.ui.views.settings_dialog import SettingsDialog
from tests.ui.conftest import close_windows, wait_until

pytestmark = pytest.mark.ui


def test_settings_round_trip_per_profile_and_keys_never_reach_files(
    qtbot: Any, ui_settings: Callable[..., Any]
) -> None:
    one = ui_settings("one")
    two = ui_settings("two")
    dialog = SettingsDialog(one)
    qtbot.addWidget(dialog)
    ed = dialog.editors
    assert isinstance(ed["stt_model"], QLineEdit)
    ed["stt_model"].setText("base.en")
    assert isinstance(ed["summarizer"], QComboBox)
    ed["summarizer"].setCurrentText("openai")
    assert isinstance(ed["openai_base_url"], QLineEdit)
    ed["openai_base_url"].setText("http://127.0.0.1:9/v1")
    assert isinstance(ed["offer_timeout_s"], QDoubleSpinBox)
    ed["offer_timeout_s"].setValue(12.5)
    assert isinstance(ed["theme"], QComboBox)
    ed["theme"].setCurrentText("dark")
    key = ed["openai_api_key"]
    assert isinstance(key, QLineEdit)
    assert key.echoMode() == QLineEdit.EchoMode.Password
    key.setText("sk-test-never-on-disk")
    qtbot.mouseClick(dialog.save_btn, Qt.MouseButton.LeftButton)
    # Settings are saved; with no OS keychain here the key is refused, with a message.
    assert dialog.saved is not None
    assert "keychain" in dialog.messages.label.text()
    text = (one.profile_dir / "settings.json").read_text()
    assert "sk-test-never-on-disk" not in text
    assert "openai_api_key" not in json.loads(text)

    again = load_settings({"profile": "one", "home": one.home}, env={})
    assert again.stt_model == "base.en"
    assert again.summarizer == "openai"
    assert again.openai_base_url == "http://127.0.0.1:9/v1"
    assert again.offer_timeout_s == 12.5
    assert again.theme == "dark"
    other = load_settings({"profile": "two", "home": two.home}, env={})
    assert other.stt_model == "auto" and other.theme == "light"
    assert not (two.profile_dir / "settings.json").exists()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("livekit_url", "ftp://example.com", "livekit_url"),
        ("livekit_url", "wss://lk.example.com", "LIVEKIT_API_SECRET"),
        ("backend_url", "not a url", "backend_url"),
        ("backend_url", "http://a.test, http://agent:pw@b.test", "no user name or password"),
        ("backend_url", ",".join(f"http://r{n}.test" for n in range(9)), "at most 8"),
        ("openai_base_url", "file:///etc", "openai_base_url"),
        ("offer_timeout_s", 0.0, "offer_timeout_s"),
    ],
)
def test_settings_dialog_rejects_bad_input_with_a_message(
    qtbot: Any, ui_settings: Callable[..., Any], field: str, value: Any, needle: str
) -> None:
    settings = ui_settings("bad")
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    editor = dialog.editors[field]
    if isinstance(editor, QDoubleSpinBox):
        editor.setValue(value)
    else:
        assert isinstance(editor, QLineEdit)
        editor.setText(value)
    qtbot.mouseClick(dialog.save_btn, Qt.MouseButton.LeftButton)
    assert dialog.saved is None
    assert needle in dialog.messages.label.text()
    assert not dialog.messages.isHidden()
    assert not (settings.profile_dir / "settings.json").exists(), "nothing half-saved"


def test_agent_window_lists_real_devices_remembers_choice_and_rejects_bad_input(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Any],
    access: LiveKitAccess,
) -> None:
    portaudio_inputs = [str(d["name"]) for d in sd.query_devices() if d["max_input_channels"] > 0]
    assert portaudio_inputs, "PulseAudio should give PortAudio devices"

    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            ctx = await open_context(ui_settings("dev", role="agent"), access, stack)
            other = await open_context(ui_settings("dev2", role="agent"), access, stack)
            w = AgentWindow(context=ctx)
            qtbot.addWidget(w)
            w.show()
            try:
                await ctx_start(w)
                combo = w.call_panel.input_combo
                listed = [combo.itemData(i) for i in range(combo.count())]
                pick = portaudio_inputs[0]
                combo.setCurrentIndex(combo.findData(pick))
                combo.activated.emit(combo.currentIndex())
                await wait_until(
                    lambda: (
                        w.controller.devices.chosen["input"] == pick
                        and (ctx.settings.profile_dir / "settings.json").exists()
                    ),
                    10,
                    "device choice saved",
                )
                await wait_until(
                    lambda: "Using" in w.call_panel.input_state.text(), 10, "device state"
                )
                # Bad input: a room name with spaces, a transfer to nobody.
                w.call_panel.room_edit.setText("bad room!")
                qtbot.mouseClick(w.call_panel.join_btn, Qt.MouseButton.LeftButton)
                room_error = w.messages.label.text()
                w.transfer_panel.target.setText("")
                w.transfer_panel._on_start_clicked()
                target_error = w.transfer_panel.reason.text()
                return {
                    "listed": listed,
                    "pick": pick,
                    "room_error": room_error,
                    "target_error": target_error,
                    "in_call": w.call_panel.in_call,
                    "state": w.call_panel.input_state.text(),
                    "other": other.settings.input_device,
                }
            finally:
                await close_windows(w)

    r = run_ui(scenario(), 60)
    assert set(portaudio_inputs) <= set(r["listed"]), "every PortAudio input is offered"
    assert r["listed"][0] == "", "the system default comes first"
    assert r["pick"] in r["state"]
    assert "room:" in r["room_error"] and not r["in_call"]
    assert "transfer to" in r["target_error"]
    assert r["other"] == "", "another profile does not share the choice"
    remembered = load_settings({"profile": "dev", "home": ui_settings("x").home}, env={})
    assert remembered.input_device == r["pick"]


async def ctx_start(window: AgentWindow) -> None:
    """Open the window's devices (a join would do it too)."""
    await window.controller.start()
    window.call_panel.refresh_devices()
