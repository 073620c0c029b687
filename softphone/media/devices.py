"""Native audio devices: device lists, microphone capture, speaker playback, hot-plug.

Capture and playback go through PortAudio (``sounddevice``). The microphone
feeds one ``rtc.AudioSource`` for its whole life, so switching devices (by the
user, or because a headset was unplugged) never republishes the track and never
drops the call. The speaker mixes every remote track it is given into the
chosen output device.

Hot-plug: a watcher notices when the device in use stops delivering audio
(unplugged), rescans PortAudio, and falls back to the system default; while
fallen back it looks for the chosen device again and switches back when it
returns. The chosen device is remembered by name (``Settings.input_device`` /
``output_device``), per profile.

Clean audio: the microphone's blocks pass through one :class:`AudioProcessor`
(echo cancellation, noise suppression, high-pass, gain control; all on by
default) in PortAudio's capture thread, and the speaker hands every block it
plays to the same processor as the echo canceller's reverse stream.

With no audio device at all (headless CI without a sound server) nothing
fails: the microphone reports ``device_name is None`` and publishes nothing,
the speaker drops what it is given after metering it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import numpy as np
from livekit import rtc

from softphone.domain.events import EventEmitter
from softphone.media.levels import LevelTracker
from softphone.media.processing import AudioProcessor, ProcessingOptions
from softphone.media.session import RemoteAudio

try:  # PortAudio may be missing entirely; the app then runs without devices.
    import sounddevice as sd
except OSError:  # pragma: no cover - depends on the machine
    sd = None

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
# Capture in 20 ms blocks: a 40 ms block held every sample up to 40 ms before
# anyone saw it; 20 ms is what a SIP phone sends, and two whole 10 ms frames for
# the audio processing. Playback stays at 40 ms: with 20 ms blocks the pulse
# plugin underran on a loaded machine, and every underrun shifts the echo's
# delay under the echo canceller, which then lets echo through while it re-learns.
BLOCK = SAMPLE_RATE // 50
PLAYBACK_BLOCK = SAMPLE_RATE // 25
# Playout backlog kept at most (older samples are dropped): the jitter between
# the reader's frames and the device's callbacks plus a stall of the loop; a
# 200 ms cap let a backlog built during a stall stay in the call as delay.
# (60 ms dropped audio audibly whenever the loaded test machine stalled.)
MAX_BUFFER_SAMPLES = SAMPLE_RATE // 10
# Below the cap, a backlog that never drains is delay for the rest of the call
# (the reader and the device run at the same rate, so whatever piled up in a
# burst stays): when the least a track held after any callback of the last
# TRIM_WINDOW_CALLBACKS (1 s of playback blocks) was more than BACKLOG_KEEP,
# the surplus is dropped once. BACKLOG_KEEP stays for the reader's jitter.
TRIM_WINDOW_CALLBACKS = 25
BACKLOG_KEEP = SAMPLE_RATE // 50
# A remote track is read in frames of this many ms: half the wake-ups of 10 ms frames.
READ_FRAME_MS = 20
# The AudioSource's queue (was 200 ms: up to that much delay sat in it), and
# the captured blocks waiting for the loop (the newest are kept). Fewer pending
# blocks (10) cut the delay after a stall but dropped speech whenever the loaded
# machine stalled the loop (the far end's transcript lost words): 1 s of them.
SOURCE_QUEUE_MS = 100
MAX_PENDING_BLOCKS = 50
STALL_S = 1.0  # a stream with no callback for this long is considered lost
# A stream just opened can stall for seconds (measured through the pulse plugin
# right after a rescan: first input callback after 2 s, output silent 1.4 s after
# priming); judged by STALL_S, a fresh fallback device looked lost too and the
# watcher rescanned again. Only a failed stream counts as lost that early.
START_GRACE_S = 4.0

DeviceKind = Literal["input", "output"]
DeviceEvent = Literal["devices_changed", "device_switched", "device_error"]


@dataclasses.dataclass(frozen=True)
class AudioDevice:
    """One PortAudio device.

    Attributes:
        name: The device name; this is what a profile remembers.
        index: PortAudio's index (valid until the next rescan).
        kind: ``input`` or ``output``.
        default: True for the system default of its kind.
    """

    name: str
    index: int
    kind: DeviceKind
    default: bool


@dataclasses.dataclass(frozen=True)
class DeviceSwitch:
    """A device change: which kind, to what (``None``: no device), and why."""

    kind: DeviceKind
    name: str | None
    reason: Literal["chosen", "fallback", "returned", "none"]


def list_devices(kind: DeviceKind) -> list[AudioDevice]:
    """The devices of one kind that PortAudio sees now; empty if there are none."""
    if sd is None:
        return []
    try:
        devices = sd.query_devices()
        default_in, default_out = sd.default.device
    except Exception:
        return []
    default = default_in if kind == "input" else default_out
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    return [
        AudioDevice(name=str(d["name"]), index=i, kind=kind, default=i == default)
        for i, d in enumerate(devices)
        if d.get(key, 0) > 0
    ]


def rescan() -> None:
    """Make PortAudio enumerate devices again; every open stream must be closed first."""
    if sd is None:
        return
    with contextlib.suppress(Exception):
        sd._terminate()
        sd._initialize()


# Lists devices in a fresh PortAudio: a child process, so that looking does not
# close and reopen this process's streams (a rescan silences both for up to 2 s).
_PROBE = (
    "import json, sounddevice as sd; d = sd.query_devices(); print(json.dumps("
    "[[x['name'] for x in d if x['max_input_channels'] > 0],"
    " [x['name'] for x in d if x['max_output_channels'] > 0]]))"
)


async def probe_device_names(timeout_s: float = 10.0) -> dict[DeviceKind, set[str]] | None:
    """The device names a fresh PortAudio sees now, or None if that cannot be told."""
    if sd is None or getattr(sys, "frozen", False):  # a bundled app has no ``python -c``
        return None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        inputs, outputs = json.loads(out)
        return {"input": set(inputs), "output": set(outputs)}
    except (TimeoutError, ValueError, TypeError):
        return None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _resolve(kind: DeviceKind, name: str) -> AudioDevice | None:
    """The device named ``name`` (empty: the default), else the default, else any."""
    devices = list_devices(kind)
    for d in devices:
        if name and d.name == name:
            return d
    for d in devices:
        if d.default:
            return d
    return devices[0] if devices else None


class _Stream:
    """An open PortAudio stream plus the time of its last callback (for stall checks)."""

    def __init__(self, device: AudioDevice, stream: Any) -> None:
        self.device = device
        self.stream = stream
        self.opened = self.last_callback = time.monotonic()

    def lost(self) -> bool:
        if not bool(getattr(self.stream, "active", False)):
            return True
        now = time.monotonic()
        return now - self.opened > START_GRACE_S and now - self.last_callback > STALL_S

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.abort()
        with contextlib.suppress(Exception):
            self.stream.close()


class Microphone:
    """Captures the chosen input device into one ``rtc.AudioSource``.

    Args:
        loop: The event loop the source is fed on (default: the running one).
        processor: Cleans each captured block before it is sent (None: raw).
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        processor: AudioProcessor | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._processor = processor
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self.levels = LevelTracker()
        self._stream: _Stream | None = None
        # The PortAudio thread appends here (deque appends are atomic) and
        # wakes the pump with call_soon_threadsafe, which on the app's QtLoop
        # is a pipe write, never a Qt call from the audio thread.
        self._blocks: collections.deque[bytes] = collections.deque(maxlen=MAX_PENDING_BLOCKS)
        self._captured = asyncio.Event()
        self._taps: list[Callable[[np.ndarray], None]] = []
        self._pump = self._loop.create_task(self._run_pump())

    def add_tap(self, tap: Callable[[np.ndarray], None]) -> Callable[[], None]:
        """Also hand each captured block (int16, 20 ms) to ``tap``, on the loop.

        Returns:
            A function that removes the tap.
        """
        self._taps.append(tap)
        return lambda: self._taps.remove(tap) if tap in self._taps else None

    @property
    def device_name(self) -> str | None:
        """The device capturing now, or ``None`` when there is none."""
        return self._stream.device.name if self._stream else None

    def lost(self) -> bool:
        """True if the device in use stopped delivering audio."""
        return self._stream is not None and self._stream.lost()

    def open(self, device: AudioDevice | None) -> None:
        """Capture from ``device`` (``None``: stop capturing)."""
        self.close_stream()
        if device is None or sd is None:
            return
        holder: list[_Stream] = []

        def callback(indata: np.ndarray, frames: int, _t: Any, _status: Any) -> None:
            if holder:
                holder[0].last_callback = time.monotonic()
            pcm = indata[:, 0].copy()
            if self._processor is not None:
                pcm = self._processor.process_capture(pcm)
                if not pcm.size:
                    return
            self.levels.feed(pcm)
            self._blocks.append(pcm.tobytes())
            with contextlib.suppress(RuntimeError):  # the loop closed under a last callback
                self._loop.call_soon_threadsafe(self._captured.set)

        stream = sd.InputStream(
            device=device.index,
            channels=1,
            samplerate=SAMPLE_RATE,
            dtype="int16",
            blocksize=BLOCK,
            callback=callback,
        )
        holder.append(_Stream(device, stream))
        stream.start()
        self._stream = holder[0]

    def close_stream(self) -> None:
        """Stop capturing (the source and its track stay)."""
        s, self._stream = self._stream, None
        if s is not None:
            s.close()
        self.levels.reset()

    async def _run_pump(self) -> None:
        while True:
            if not self._blocks:
                self._captured.clear()
                await self._captured.wait()
                continue
            data = self._blocks.popleft()
            frame = rtc.AudioFrame(data, SAMPLE_RATE, 1, len(data) // 2)
            for tap in list(self._taps):
                try:
                    tap(np.frombuffer(data, dtype=np.int16))
                except Exception:
                    log.debug("microphone tap failed", exc_info=True)
            try:
                await self.source.capture_frame(frame)
            except Exception:
                log.debug("capture_frame failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop capturing and the pump task."""
        self.close_stream()
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        await self.source.aclose()


class Speaker:
    """Plays the remote audio tracks it is given on the chosen output device.

    Each track is read by its own task into its own buffer; the output callback
    sums the buffers. With no device the audio is metered and dropped.

    Args:
        processor: Given every block as it goes to the device (the echo
            canceller's reverse stream), when there is one.
    """

    def __init__(self, *, processor: AudioProcessor | None = None) -> None:
        self._processor = processor
        self.levels = LevelTracker()
        self._lock = threading.Lock()
        self._buffers: dict[str, np.ndarray] = {}
        # Per track, the least it held after a callback in this trim window.
        self._floors: dict[str, int] = {}
        self._callbacks = 0
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._stream: _Stream | None = None
        self.trimmed_ms = 0.0

    @property
    def device_name(self) -> str | None:
        """The device playing now, or ``None`` when there is none."""
        return self._stream.device.name if self._stream else None

    @property
    def tracks(self) -> list[str]:
        """Track sids being played."""
        return list(self._readers)

    def lost(self) -> bool:
        """True if the device in use stopped pulling audio."""
        return self._stream is not None and self._stream.lost()

    def backlog_ms(self) -> float:
        """The most audio any track has waiting for the device, in ms."""
        with self._lock:
            most = max((len(buf) for buf in self._buffers.values()), default=0)
        return most * 1000 / SAMPLE_RATE

    def add(self, audio: RemoteAudio) -> None:
        """Start playing one remote track (again, if it was already added)."""
        self.remove(audio.sid)
        with self._lock:
            self._buffers[audio.sid] = np.zeros(0, dtype=np.int16)
        self._readers[audio.sid] = asyncio.get_running_loop().create_task(self._read(audio))

    def remove(self, sid: str) -> None:
        """Stop playing a track."""
        task = self._readers.pop(sid, None)
        if task is not None:
            task.cancel()
        with self._lock:
            self._buffers.pop(sid, None)

    async def _read(self, audio: RemoteAudio) -> None:
        stream = audio.stream(frame_size_ms=READ_FRAME_MS)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16)
                self.levels.feed(pcm)
                if self._stream is None:
                    continue
                with self._lock:
                    buf = self._buffers.get(audio.sid)
                    if buf is None:
                        return
                    buf = np.concatenate((buf, pcm))[-MAX_BUFFER_SAMPLES:]
                    self._buffers[audio.sid] = buf
        finally:
            await stream.aclose()

    def _callback(self, outdata: np.ndarray, frames: int, _t: Any, _status: Any) -> None:
        if self._stream is not None:
            self._stream.last_callback = time.monotonic()
        mixed = np.zeros(frames, dtype=np.int32)
        with self._lock:
            for sid, buf in self._buffers.items():
                n = min(frames, len(buf))
                if n:
                    mixed[:n] += buf[:n]
                    self._buffers[sid] = buf[n:]
                left = len(buf) - n
                self._floors[sid] = min(self._floors.get(sid, left), left)
            self._callbacks += 1
            if self._callbacks >= TRIM_WINDOW_CALLBACKS:
                self._trim()
        outdata[:, 0] = np.clip(mixed, -32768, 32767).astype(np.int16)
        if self._processor is not None:
            self._processor.process_render(outdata[:, 0])

    def _trim(self) -> None:
        """Drop what never drained in this window (see BACKLOG_KEEP); under the lock."""
        for sid, floor in self._floors.items():
            surplus = floor - BACKLOG_KEEP
            buf = self._buffers.get(sid)
            if surplus > 0 and buf is not None:
                self._buffers[sid] = buf[surplus:]
                self.trimmed_ms += surplus * 1000 / SAMPLE_RATE
        self._floors.clear()
        self._callbacks = 0

    def open(self, device: AudioDevice | None) -> None:
        """Play on ``device`` (``None``: stop playing)."""
        self.close_stream()
        if device is None or sd is None:
            return
        stream = sd.OutputStream(
            device=device.index,
            channels=1,
            samplerate=SAMPLE_RATE,
            dtype="int16",
            blocksize=PLAYBACK_BLOCK,
            latency="high",  # a steady stream matters more than 50 ms for a phone call
            callback=self._callback,
        )
        self._stream = _Stream(device, stream)
        stream.start()

    def close_stream(self) -> None:
        """Stop playing (tracks stay attached and metered)."""
        s, self._stream = self._stream, None
        if s is not None:
            s.close()
        with self._lock:
            for sid in self._buffers:
                self._buffers[sid] = np.zeros(0, dtype=np.int16)

    async def aclose(self) -> None:
        """Stop every reader and the output stream."""
        tasks = list(self._readers.values())
        for sid in list(self._readers):
            self.remove(sid)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close_stream()


class AudioDevices(EventEmitter[DeviceEvent]):
    """The microphone and speaker of one window, with device choice and hot-plug.

    Use as ``async with AudioDevices(input_device=..., output_device=...) as devices:``.

    Events: ``device_switched`` (:class:`DeviceSwitch`), ``devices_changed``
    (the lists changed), ``device_error`` (text of a device that would not open).

    Args:
        input_device: The remembered microphone name (empty: system default).
        output_device: The remembered speaker name (empty: system default).
        poll_s: How often the watcher checks that the devices in use still work.
        return_poll_s: How often, while fallen back, it looks for the chosen
            device again (in a child process; only when it is back does it
            rescan, which closes this process's streams for a moment).
        processing: What cleans the microphone (default: everything on).
    """

    def __init__(
        self,
        *,
        input_device: str = "",
        output_device: str = "",
        poll_s: float = 1.0,
        return_poll_s: float = 3.0,
        processing: ProcessingOptions | None = None,
    ) -> None:
        super().__init__()
        self.processor = AudioProcessor(processing, sample_rate=SAMPLE_RATE)
        self.chosen: dict[DeviceKind, str] = {"input": input_device, "output": output_device}
        self._poll_s = poll_s
        self._return_poll_s = return_poll_s
        self._last_return_check = 0.0
        self._probes = 0  # looks for a missing chosen device since falling back
        self._announced: dict[DeviceKind, tuple[str | None, str]] = {}
        self._stalls: dict[DeviceKind, int] = {"input": 0, "output": 0}
        _INSTANCES.add(self)
        self.mic: Microphone | None = None
        self.speaker = Speaker(processor=self.processor)
        self._watcher: asyncio.Task[None] | None = None
        self._fallen_back: set[DeviceKind] = set()
        self._known: tuple[list[AudioDevice], list[AudioDevice]] = ([], [])

    def inputs(self) -> list[AudioDevice]:
        """Microphones available now."""
        return list_devices("input")

    def outputs(self) -> list[AudioDevice]:
        """Speakers and headsets available now."""
        return list_devices("output")

    async def start(self) -> AudioDevices:
        """Open the chosen (or default) devices and start watching them."""
        self.mic = Microphone(processor=self.processor)
        self._known = (self.inputs(), self.outputs())
        self._open("input", self.chosen["input"], "chosen")
        self._open("output", self.chosen["output"], "chosen")
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    @property
    def processing(self) -> ProcessingOptions:
        """What cleans the microphone now."""
        return self.processor.options

    def set_processing(self, options: ProcessingOptions) -> None:
        """Change what cleans the microphone, from the next captured block on."""
        self.processor.configure(options)

    def _update_echo_delay(self) -> None:
        """Tell the echo canceller the devices' round trip (output plus input latency)."""
        total = 0.0
        for stream in (self.mic._stream if self.mic else None, self.speaker._stream):
            if stream is not None:
                with contextlib.suppress(Exception):
                    total += float(stream.stream.latency)
        self.processor.set_device_delay_ms(total * 1000)

    def _endpoint(self, kind: DeviceKind) -> Microphone | Speaker:
        if kind == "input":
            assert self.mic is not None
            return self.mic
        return self.speaker

    def _open(self, kind: DeviceKind, name: str, reason: str) -> None:
        device = _resolve(kind, name)
        endpoint = self._endpoint(kind)
        if kind == "input":
            # What the processing learnt (echo path, noise, gain) was of the old device.
            self.processor.reset()
        try:
            endpoint.open(device)
        except Exception as exc:
            log.warning("audio device would not open", extra={"kind": kind, "error": str(exc)})
            self.emit("device_error", f"the {kind} device would not open")
            endpoint.open(None)
            device = None
        self._update_echo_delay()
        if device is None:
            self._fallen_back.add(kind)
            self._announce(DeviceSwitch(kind, None, "none"))
            return
        if name and device.name != name:
            self._fallen_back.add(kind)
            reason = "fallback"
        else:
            self._fallen_back.discard(kind)
        self._announce(DeviceSwitch(kind, device.name, reason))  # type: ignore[arg-type]

    def _announce(self, switch: DeviceSwitch) -> None:
        # Reopening the same device after a rescan is not news.
        key = (switch.name, "fallback" if switch.reason == "returned" else switch.reason)
        if switch.reason != "chosen" and self._announced.get(switch.kind) == key:
            return
        self._announced[switch.kind] = (switch.name, switch.reason)
        self.emit("device_switched", switch)

    def choose(self, kind: DeviceKind, name: str) -> None:
        """Switch to the device named ``name`` (empty: the default) and remember it."""
        self.chosen[kind] = name
        self._open(kind, name, "chosen")

    def _reopen_after_rescan(self) -> None:
        """Reopen both devices after a rescan, announcing fallbacks and returns."""
        now = (self.inputs(), self.outputs())
        if [[d.name for d in k] for k in now] != [[d.name for d in k] for k in self._known]:
            self._known = now
            self.emit("devices_changed")
        for kind, devices in (("input", now[0]), ("output", now[1])):
            chosen = self.chosen[kind]  # type: ignore[index]
            present = not chosen or chosen in [d.name for d in devices]
            reason = "returned" if kind in self._fallen_back and present else "fallback"
            self._open(kind, chosen, reason)  # type: ignore[arg-type]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                self._check()
                # Looking costs a child process (~55 ms of CPU): every
                # return_poll_s for a minute, then a quarter as often.
                interval = self._return_poll_s * (1 if self._probes < 20 else 4)
                if not self._fallen_back:
                    self._probes = 0
                elif time.monotonic() - self._last_return_check >= interval:
                    self._last_return_check = time.monotonic()
                    self._probes += 1
                    if await self._chosen_present():
                        rescan_everywhere()
            except Exception:
                log.exception("device watcher check failed")

    async def _chosen_present(self) -> bool:
        """Whether a device we fell back from is there again (True when unknown)."""
        names = await probe_device_names()
        if names is None:
            return True  # cannot look without rescanning: rescan
        for kind in self._fallen_back:
            chosen = self.chosen[kind]
            if (chosen in names[kind]) if chosen else bool(names[kind]):
                return True
        return False

    def _check(self) -> None:
        """One watcher round: fall back from a device that stopped working."""
        kinds: tuple[DeviceKind, ...] = ("input", "output")
        for kind in kinds:
            lost = self._endpoint(kind).lost()
            self._stalls[kind] = self._stalls[kind] + 1 if lost else 0
        # Two rounds in a row, so a loaded machine's late callback is not an unplug.
        if any(n >= 2 for n in self._stalls.values()):
            log.info("audio device lost; falling back to the default")
            self._stalls = {"input": 0, "output": 0}
            rescan_everywhere()
            return

    async def aclose(self) -> None:
        """Close both devices and stop watching."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        _INSTANCES.discard(self)
        await self.speaker.aclose()
        if self.mic is not None:
            await self.mic.aclose()

    async def __aenter__(self) -> AudioDevices:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


_INSTANCES: weakref.WeakSet[AudioDevices] = weakref.WeakSet()


def rescan_everywhere() -> None:
    """Rescan PortAudio for every window of the process (it is process-wide).

    Every open stream of every :class:`AudioDevices` is closed first and
    reopened after, so no stream survives a re-initialisation.
    """
    live = [d for d in list(_INSTANCES) if d.mic is not None and d._watcher is not None]
    for d in live:
        assert d.mic is not None
        d.mic.close_stream()
        d.speaker.close_stream()
    rescan()
    for d in live:
        d._reopen_after_rescan()


def device_label(name: str | None) -> str:
    """How a device is named in the UI (``None``: no device)."""
    return name if name is not None else "no device"
