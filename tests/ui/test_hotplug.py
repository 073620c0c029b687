"""Hot-plug: a headset unplugged mid-call falls back to the default, and is picked again.

A real PortAudio device that can be unplugged. Through PortAudio's ALSA
backend every PulseAudio sink shows up only as ``pulse``/``default``, so the
"headset" is an ALSA PCM of its own (``type pulse``, playback into a null
sink, capture from a sine source) defined in an extra ALSA configuration file
named by ``ALSA_CONFIG_PATH``; PortAudio lists a user-defined PCM only if it
carries a ``hint { show on }`` section. The headset's sink and source live in
a second private PulseAudio (the headset's own "hardware"): PulseAudio 16
moves the streams of a sink or source that goes away to another one of the
same server, so unloading a module from the main server never makes the
PortAudio stream fail, whereas a USB headset's ALSA device does. The
headset's server has nothing to move them to: unloading its sink and source
ends their streams, as pulling the USB plug does (stopping that server
instead deadlocked libpulse in the app about one run in eight). Unplugging
also takes the PCM out of the ALSA configuration, so the device leaves the
lists; replugging restores both.

The headset's microphone "hears" a 660 Hz tone, the default microphone (the
session's virtual mic) a 440 Hz tone, so a probe participant in the call can
tell which device the agent's window is sending from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sounddevice as sd
from PySide6.QtCore import Qt

from softphone.app import LiveKitAccess, open_context
from softphone.config import load_settings
from softphone.media.devices import rescan
from softphone.server.token_minter import TokenMinter
from softphone.ui.views.agent_window import AgentWindow
from tests.audio_probe import Capture, tone_level
from tests.ui.conftest import SINK, close_windows, place_call, probe_listener, wait_until

pytestmark = pytest.mark.ui

HEADSET = "softphone_headset"  # the PortAudio device name (the ALSA PCM's name)
HEADSET_SINK = "headset_sink"
HEADSET_MIC = "headset_mic"
HEADSET_HZ = 660.0
DEFAULT_HZ = 440.0
ALSA_MAIN_CONFIG = Path("/usr/share/alsa/alsa.conf")


class Headset:
    """A pluggable headset: an ALSA PCM backed by its own PulseAudio sink and source.

    Args:
        runtime: The runtime directory of the headset's PulseAudio.
        config: The extra ALSA configuration file (named by ``ALSA_CONFIG_PATH``).
    """

    def __init__(self, runtime: Path, config: Path) -> None:
        self._env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
        self._env.pop("PULSE_SERVER", None)
        self._config = config
        self._binary = shutil.which("pulseaudio") or "pulseaudio"
        server = f"unix:{runtime}/pulse/native"
        self._pcm = f"""
pcm.{HEADSET} {{
    type asym
    playback.pcm {{ type pulse server "{server}" device "{HEADSET_SINK}" }}
    capture.pcm {{ type pulse server "{server}" device "{HEADSET_MIC}" }}
    hint {{
        show on
        description "Softphone test headset"
    }}
}}
"""
        self.plugged = False
        self._modules: list[str] = []
        config.write_text("# headset unplugged\n")

    def _up(self) -> bool:
        return subprocess.run(["pactl", "info"], env=self._env, capture_output=True).returncode == 0

    def start(self) -> None:
        """The headset's own PulseAudio, with nothing plugged in yet."""
        subprocess.run(
            [
                self._binary,
                "-D",
                "-n",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "-L",
                "module-native-protocol-unix",
            ],
            env=self._env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while not self._up():
            assert time.monotonic() < deadline, "the headset's PulseAudio did not come up"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the headset's PulseAudio (after the test)."""
        subprocess.run([self._binary, "--kill"], env=self._env, capture_output=True, timeout=30)

    def _pactl(self, *args: str) -> str:
        return subprocess.run(
            ["pactl", *args], env=self._env, check=True, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    def plug(self) -> None:
        """Connect: the headset's sink and source come up, its PCM appears in ALSA."""
        self._modules = [
            self._pactl("load-module", "module-null-sink", f"sink_name={HEADSET_SINK}"),
            self._pactl(
                "load-module",
                "module-sine-source",
                f"source_name={HEADSET_MIC}",
                f"frequency={int(HEADSET_HZ)}",
            ),
        ]
        self._config.write_text(self._pcm)
        self.plugged = True

    def unplug(self) -> None:
        """Disconnect: the PCM leaves ALSA, and its open streams end."""
        self._config.write_text("# headset unplugged\n")
        for module in self._modules:
            self._pactl("unload-module", module)
        self._modules = []
        self.plugged = False

    def streams_on_sink(self) -> int:
        """How many playback streams play into the headset now."""
        done = subprocess.run(
            ["pactl", "list", "short", "sink-inputs"],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return len(done.stdout.splitlines())


@pytest.fixture
def headset(
    pulse_audio: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Headset]:
    """A plugged-in headset, and a 440 Hz tone on the default microphone; both gone after."""
    assert ALSA_MAIN_CONFIG.exists(), "ALSA's main configuration is missing (libasound2)"
    config = tmp_path_factory.mktemp("alsa") / "headset.conf"
    device = Headset(tmp_path_factory.mktemp("headset"), config)
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"{ALSA_MAIN_CONFIG}:{config}")
    tone = subprocess.run(
        ["pactl", "load-module", "module-sine", f"sink={SINK}", f"frequency={int(DEFAULT_HZ)}"],
        env=pulse_audio,
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    device.start()
    try:
        device.plug()
        rescan()
        yield device
    finally:
        if device.plugged:
            device.unplug()
        device.stop()
        subprocess.run(["pactl", "unload-module", tone], env=pulse_audio, timeout=10)
        monkeypatch.undo()
        rescan()  # later tests see PortAudio without the headset


def _heard(capture: Capture, start: float, end: float) -> dict[float, float]:
    """The loudest level of each test tone the probe received between two times.

    Measured over 100 ms chunks: a 10 ms window cannot tell 440 Hz from 660 Hz.
    """
    windows = [w for t, w in capture.windows() if start <= t <= end]
    levels = {HEADSET_HZ: 0.0, DEFAULT_HZ: 0.0}
    if not windows:
        return levels
    audio = np.concatenate(windows)
    chunk = 4800
    for i in range(0, len(audio) - chunk + 1, chunk):
        for hz in levels:
            levels[hz] = max(levels[hz], tone_level(audio[i : i + chunk], hz))
    return levels


def test_unplugged_headset_falls_back_to_default_mid_call_and_returns(
    qtbot: Any,
    run_ui: Callable[..., Any],
    ui_settings: Callable[..., Any],
    access: LiveKitAccess,
    minter: TokenMinter,
    room_name: str,
    headset: Headset,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="softphone.media.devices")
    names = [str(d["name"]) for d in sd.query_devices()]
    assert HEADSET in names, f"the headset is not a PortAudio device: {names}"

    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            ctx = await open_context(
                ui_settings("hs", role="agent", identity="agent-hs", room=room_name),
                access,
                stack,
            )
            w = AgentWindow(context=ctx)
            qtbot.addWidget(w)
            w.show()
            # A call for the agent's headset to carry (its caller is the probe's room-mate).
            room = await place_call(ctx, caller="caller-hs", agent="agent-hs", windows=(w,))
            panel = w.call_panel
            devices = w.controller.devices
            try:
                await w.controller.start()
                panel.refresh_devices()
                # Choose the headset in both lists, as a user does.
                for combo in (panel.input_combo, panel.output_combo):
                    index = combo.findData(HEADSET)
                    assert index >= 0, "the headset is not offered"
                    combo.setCurrentIndex(index)
                    combo.activated.emit(index)
                await wait_until(
                    lambda: (
                        ctx.settings.input_device == HEADSET
                        and ctx.settings.output_device == HEADSET
                        and devices.mic is not None
                        and devices.mic.device_name == HEADSET
                        and devices.speaker.device_name == HEADSET
                    ),
                    10,
                    "headset chosen and remembered",
                )
                qtbot.mouseClick(panel.join_btn, Qt.MouseButton.LeftButton)
                await wait_until(lambda: panel.in_call, 20, "joined")
                call = w.controller.call
                listener = await probe_listener(
                    stack, access, minter, room, "probe-hs", hears="agent-hs"
                )
                capture = listener.capture
                await wait_until(
                    lambda: capture.first_time_with(HEADSET_HZ, 0.0) is not None,
                    10,
                    "the headset's microphone at the far end",
                )
                t_headset = time.monotonic()
                await asyncio.sleep(1.0)
                playing_on_headset = headset.streams_on_sink()
                before = _heard(capture, t_headset, time.monotonic())

                headset.unplug()
                await wait_until(
                    lambda: (
                        "not available" in panel.input_state.text()
                        and "not available" in panel.output_state.text()
                    ),
                    10,
                    "the UI to say it fell back",
                )
                fallback = {
                    "mic": devices.mic.device_name if devices.mic else None,
                    "speaker": devices.speaker.device_name,
                    "input_state": panel.input_state.text(),
                    "output_state": panel.output_state.text(),
                    "in_call": panel.in_call and w.controller.call is call,
                    "status": panel.status.text(),
                    "remembered": (devices.chosen["input"], devices.chosen["output"]),
                    "listed": [
                        panel.output_combo.itemText(i) for i in range(panel.output_combo.count())
                    ],
                }
                t_fallback = time.monotonic()
                # A device opened right after a rescan may take a second or two to deliver.
                await wait_until(
                    lambda: _heard(capture, t_fallback, time.monotonic())[DEFAULT_HZ] > 0.05,
                    10,
                    "the default microphone at the far end",
                )
                t_default = time.monotonic()
                await asyncio.sleep(1.0)
                during = _heard(capture, t_default, time.monotonic())

                headset.plug()
                await wait_until(
                    lambda: (
                        devices.mic is not None
                        and devices.mic.device_name == HEADSET
                        and devices.speaker.device_name == HEADSET
                    ),
                    10,
                    "the headset picked again",
                )
                t_returned = time.monotonic()
                await wait_until(
                    lambda: _heard(capture, t_returned, time.monotonic())[HEADSET_HZ] > 0.05,
                    10,
                    "the headset's microphone at the far end again",
                )
                t_back = time.monotonic()
                await asyncio.sleep(1.0)
                after = _heard(capture, t_back, time.monotonic())
                return {
                    "before": before,
                    "playing_on_headset": playing_on_headset,
                    "fallback": fallback,
                    "during": during,
                    "after": after,
                    "states": (panel.input_state.text(), panel.output_state.text()),
                    "in_call": panel.in_call and w.controller.call is call,
                    "status": panel.status.text(),
                    "log": w.event_log.lines(),
                    "errors": w.messages.label.text() if not w.messages.isHidden() else "",
                }
            finally:
                await close_windows(w)

    r = run_ui(scenario(), 60)
    remembered = load_settings({"profile": "hs", "home": ui_settings("x").home}, env={})
    assert (remembered.input_device, remembered.output_device) == (HEADSET, HEADSET)
    # With the headset: its microphone goes to the far end, its sink plays the call.
    assert r["playing_on_headset"] == 1, "the speaker does not play into the headset"
    assert r["before"][HEADSET_HZ] > 0.05 and r["before"][DEFAULT_HZ] < 0.02, r["before"]
    # Unplugged: the default device, said in the UI, and the call goes on.
    fb = r["fallback"]
    assert fb["mic"] not in (None, HEADSET) and fb["speaker"] not in (None, HEADSET), fb
    assert f"using {fb['mic']}" in fb["input_state"], fb
    assert f"using {fb['speaker']}" in fb["output_state"], fb
    assert any("not connected" in item for item in fb["listed"]), fb["listed"]
    assert fb["in_call"] and "Connected to" in fb["status"], fb
    assert fb["remembered"] == (HEADSET, HEADSET), "a fallback must not replace the choice"
    assert r["during"][DEFAULT_HZ] > 0.05 and r["during"][HEADSET_HZ] < 0.02, r["during"]
    # Replugged: the chosen headset again, in the same call.
    assert r["after"][HEADSET_HZ] > 0.05 and r["after"][DEFAULT_HZ] < 0.02, r["after"]
    assert r["states"] == (f"Using {HEADSET}", f"Using {HEADSET}"), r["states"]
    assert r["in_call"] and "Connected to" in r["status"]
    assert any("(fallback)" in line for line in r["log"]), r["log"]
    assert any("(returned)" in line for line in r["log"]), r["log"]
    assert not r["errors"], r["errors"]
    # One unplug, one fallback: a freshly opened default device is not taken for lost.
    lost = [x for x in caplog.records if "audio device lost" in x.getMessage()]
    assert len(lost) == 1, [x.getMessage() for x in lost]
