"""The audio processor on its own: 10 ms framing, switching, and settings it is built from."""

from __future__ import annotations

import numpy as np
import pytest

from softphone.config import load_settings
from softphone.errors import ConfigError
from softphone.media.processing import AudioProcessor, ProcessingOptions, options_from_settings

pytestmark = pytest.mark.unit

RATE = 48000


def _speechlike(seconds: float) -> np.ndarray:
    """A voiced, wavering signal (harmonics of a gliding pitch), int16."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    x = np.zeros_like(t)
    for k in range(1, 8):
        x += np.sin(k * phase) / k
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * x / float(np.max(np.abs(x))) * 32767).astype(np.int16)


def test_whole_10ms_blocks_pass_with_no_delay_and_odd_blocks_are_carried_over() -> None:
    signal = _speechlike(1.0)
    whole = AudioProcessor(ProcessingOptions(False, False, True, False), sample_rate=RATE)
    for block in np.split(signal, 25):  # 40 ms blocks, as the devices deliver
        out = whole.process_capture(block)
        assert out.dtype == np.int16 and len(out) == len(block)
    assert whole.frames == 100

    odd = AudioProcessor(ProcessingOptions(False, False, True, False), sample_rate=RATE)
    sizes = [700, 123, 1500, 480, 9]
    outs = []
    at = 0
    for n in sizes:
        outs.append(odd.process_capture(signal[at : at + n]))
        at += n
    # Only whole 10 ms frames come out; the rest waits for the next block.
    assert [len(o) for o in outs] == [480, 0, 1440, 480, 0]
    assert sum(len(o) for o in outs) == at // 480 * 480


def test_off_passes_the_samples_untouched_and_switching_takes_effect() -> None:
    signal = _speechlike(0.5)
    processor = AudioProcessor(ProcessingOptions.off(), sample_rate=RATE)
    assert not processor.options.any_on
    out = processor.process_capture(signal)
    assert out is signal and processor.frames == 0
    processor.process_render(signal)  # no echo canceller: nothing to learn, no error

    processor.configure(ProcessingOptions(False, False, True, False))
    filtered = processor.process_capture(signal)
    assert processor.frames == len(signal) // 480
    assert not np.array_equal(filtered, signal), "the high-pass filter changed nothing"


def test_a_dc_offset_and_rumble_are_removed_by_the_high_pass_filter() -> None:
    t = np.arange(2 * RATE) / RATE
    rumble = (3000 + 4000 * np.sin(2 * np.pi * 20 * t)).astype(np.int16)
    processor = AudioProcessor(ProcessingOptions(False, False, True, False), sample_rate=RATE)
    out = np.concatenate([processor.process_capture(b) for b in np.split(rumble, 50)])
    tail = out[RATE:].astype(np.float64)
    assert np.sqrt(np.mean(tail**2)) < 0.2 * np.sqrt(np.mean(rumble[RATE:].astype(float) ** 2))


def test_echo_of_what_was_played_is_removed_offline() -> None:
    played = _speechlike(6.0)
    delay = int(0.05 * RATE)
    heard = np.zeros_like(played)
    heard[delay:] = played[:-delay] // 2  # the speaker, 50 ms later, half as loud
    processor = AudioProcessor(ProcessingOptions(True, False, False, False), sample_rate=RATE)
    processor.set_device_delay_ms(50)
    out = []
    for i in range(0, len(played), 1920):
        processor.process_render(played[i : i + 1920])
        out.append(processor.process_capture(heard[i : i + 1920]))
    cleaned = np.concatenate(out)[3 * RATE :].astype(np.float64)
    before = heard[3 * RATE :].astype(np.float64)
    erle = 10 * np.log10(float(np.mean(before**2)) / max(float(np.mean(cleaned**2)), 1e-9))
    assert erle >= 20, f"echo removed by only {erle:.1f} dB"


def test_processing_settings_default_on_and_refuse_bad_values(tmp_path: object) -> None:
    settings = load_settings({"profile": "p", "home": tmp_path}, env={})
    assert options_from_settings(settings) == ProcessingOptions()
    off = load_settings(
        {
            "profile": "p",
            "home": tmp_path,
            "echo_cancellation": "off",
            "noise_suppression": False,
            "high_pass": "no",
            "auto_gain": "0",
        },
        env={},
    )
    assert options_from_settings(off) == ProcessingOptions.off()
    with pytest.raises(ConfigError, match="echo_cancellation"):
        load_settings({"profile": "p", "home": tmp_path, "echo_cancellation": "sometimes"}, env={})
    with pytest.raises(ConfigError, match="auto_gain"):
        load_settings({"profile": "p", "home": tmp_path, "auto_gain": 3}, env={})
