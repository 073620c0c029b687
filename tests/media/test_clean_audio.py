"""Clean audio, measured at the far end of a real call from an agent on a laptop.

The agent's speakers and microphone are real PulseAudio devices (see
:mod:`tests.media.laptop`): the far end's speech, played by the agent's
speakers, leaks into the agent's microphone through the sink's monitor, mixed
with the agent's own voice and the room's noise. The far end is a real RTC
participant; what it receives is compared with processing off and on, in the
same call (the processing is switched between scenes, as the settings do).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from softphone.infra.local_server import LocalLiveKitServer
from softphone.media.processing import ProcessingOptions
from softphone.server.token_minter import TokenMinter
from softphone.speech.live_transcriber import to_16k
from softphone.speech.whisper_engine import shared_engine
from tests.media.laptop import (
    SAMPLE_RATE,
    EchoCall,
    Laptop,
    echo_scene,
    erle_db,
    noise_scene,
    power_db,
    snr_db,
    stretch,
)
from tests.speech.corpus import wer

pytestmark = pytest.mark.integration


async def test_far_end_echo_is_cancelled_and_the_agents_voice_passes(
    laptop: Laptop, livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    scene = echo_scene()
    received: dict[str, np.ndarray] = {}
    async with EchoCall(
        laptop=laptop,
        url=livekit_server.url,
        minter=minter,
        room=room_name,
        processing=ProcessingOptions.off(),
    ) as call:
        for name, options in (("off", ProcessingOptions.off()), ("on", ProcessingOptions())):
            call.devices.set_processing(options)
            assert call.devices.processing == options
            received[name] = await call.run(scene.far, scene.room)

    echo = {k: power_db(stretch(x, *scene.echo_span)) for k, x in received.items()}
    voice = {k: power_db(stretch(x, *scene.voice_span)) for k, x in received.items()}
    erle = erle_db(received["off"], received["on"], scene.echo_span)
    print(f"\necho at the far end: off {echo['off']:.1f} dBFS, on {echo['on']:.1f} dBFS")
    print(f"ERLE {erle:.1f} dB (by mean power {echo['off'] - echo['on']:.1f} dB)")
    print(f"agent's voice off {voice['off']:.1f}, on {voice['on']:.1f} dBFS")
    # The echo really leaked (as loud as speech), and the agent really spoke.
    assert echo["off"] > -35, f"no echo reached the far end: {echo}"
    assert voice["off"] > -35, f"the agent's voice did not reach the far end: {voice}"
    assert erle >= 20, f"echo removed by only {erle:.1f} dB"
    # The agent's own voice passes (the gain control may raise it, never bury it).
    assert voice["on"] - voice["off"] > -6, f"the agent's voice was cut: {voice}"


async def test_noise_is_suppressed_and_the_voice_still_transcribes(
    laptop: Laptop, livekit_server: LocalLiveKitServer, minter: TokenMinter, room_name: str
) -> None:
    engine = await asyncio.to_thread(shared_engine, model="tiny.en")
    scene = noise_scene()
    scenes = (
        ("clean", ProcessingOptions.off(), scene.clean),
        ("noisy", ProcessingOptions.off(), scene.noisy),
        ("processed", ProcessingOptions(), scene.noisy),
    )
    received: dict[str, np.ndarray] = {}
    async with EchoCall(
        laptop=laptop,
        url=livekit_server.url,
        minter=minter,
        room=room_name,
        processing=ProcessingOptions.off(),
    ) as call:
        for name, options, room in scenes:
            call.devices.set_processing(options)
            received[name] = await call.run(scene.silent, room)

    def transcribe(x: np.ndarray) -> str:
        said = stretch(x, *scene.said_span)
        pieces, _ = engine.transcribe(to_16k(said.astype(np.float32), SAMPLE_RATE))
        return " ".join(p.text for p in pieces)

    texts = {k: await asyncio.to_thread(transcribe, x) for k, x in received.items()}
    errors = {k: wer(scene.text, t) for k, t in texts.items()}
    snr = {
        k: snr_db(received[k], scene.speech_span, scene.noise_span) for k in ("noisy", "processed")
    }
    gain = snr["processed"] - snr["noisy"]
    print(f"\nSNR at the far end: noisy {snr['noisy']:.1f} dB, processed {snr['processed']:.1f} dB")
    print(f"SNR gain {gain:.1f} dB; WER {', '.join(f'{k} {v:.3f}' for k, v in errors.items())}")
    noise_level = power_db(stretch(received["noisy"], *scene.noise_span))
    assert noise_level > -60, "no noise reached the far end"
    assert gain >= 10, f"noise suppression gained only {gain:.1f} dB"
    assert errors["clean"] < 0.2, f"even the clean voice did not transcribe: {texts['clean']!r}"
    assert errors["processed"] <= errors["clean"] + 0.03, texts
