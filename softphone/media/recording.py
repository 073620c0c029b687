"""Per-participant call recording to WAV files, written incrementally.

Each speaker of each call leg (the local mic, every remote track) gets its
own mono 16-bit WAV file, ``<directory>/<call_id>/<leg>-<identity>.wav``, so
speaker attribution comes from the track. Audio is handed to a writer thread
every ``flush_interval_s`` (0.25 s); each hand-over writes the samples and
rewrites the header's sizes, so after the process is killed the file is a
valid WAV missing at most the last flush interval. A file left with a stale
header (e.g. the machine lost power mid-write) is repaired by
:func:`repair_wav` / :func:`repair_directory`, which the app runs at start.

A participant who reconnects gets a new track; its audio continues the same
file, with the gap filled by silence so the file stays aligned with the
call's timeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from softphone.errors import MediaError, SoftphoneError
from softphone.media.session import RemoteAudio
from softphone.store.history import HistoryStore

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
HEADER_BYTES = 44
MAX_GAP_S = 3600.0

_writer_lock = threading.Lock()
_writer: concurrent.futures.ThreadPoolExecutor | None = None


def writer_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread every recording of this process writes its files on.

    Started by the first call of this function, so call it where a pause
    does not matter (an agent window does, when it is built): starting a
    thread waits until it runs, which held the window's loop 10-30 ms on a
    busy machine when each call's recorder started its own.
    """
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recorder")
            _writer.submit(int).result()  # its thread runs from now on
        return _writer


def _header(data_bytes: int, sample_rate: int, channels: int = 1) -> bytes:
    byte_rate = sample_rate * channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def _private_dir(path: Path) -> None:
    """Create ``path`` (its missing parent too) for the user only (0700).

    ``mkdir``'s mode is cut by the umask, and an existing directory keeps its
    mode, so the mode is set again: recordings are personal data.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def safe_name(identity: str) -> str:
    """``identity`` made safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", identity)[:100] or "unknown"


class WavWriter:
    """A mono 16-bit PCM WAV file that is valid after every :meth:`write`.

    Blocking; used from the recorder's writer thread. Opening an existing
    file appends to it (after repairing its header).

    Args:
        path: The file.
        sample_rate: Samples per second.
    """

    def __init__(self, path: Path, *, sample_rate: int = SAMPLE_RATE) -> None:
        self.path = path
        self.sample_rate = sample_rate
        _private_dir(path.parent)
        if path.exists() and path.stat().st_size >= HEADER_BYTES:
            repair_wav(path)
            self._f: BinaryIO = path.open("r+b")
            self._f.seek(0, 2)
            self.data_bytes = self._f.tell() - HEADER_BYTES
        else:
            # Created 0600 from the start, so no other user ever sees it; the
            # file stays open for the writer's life, closed in close().
            self._f = open(path, "w+b", opener=lambda p, flags: os.open(p, flags, 0o600))  # noqa: SIM115
            self._f.write(_header(0, sample_rate))
            self.data_bytes = 0
        os.fchmod(self._f.fileno(), 0o600)  # also a file kept from an older version
        self._f.flush()

    @property
    def samples(self) -> int:
        """Samples written so far."""
        return self.data_bytes // 2

    def write(self, pcm: bytes) -> None:
        """Append 16-bit samples and make the header match; flushed to the OS."""
        if not pcm:
            return
        self._f.seek(0, 2)
        self._f.write(pcm)
        self.data_bytes += len(pcm)
        self._f.seek(4)
        self._f.write(struct.pack("<I", 36 + self.data_bytes))
        self._f.seek(40)
        self._f.write(struct.pack("<I", self.data_bytes))
        self._f.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        with contextlib.suppress(OSError):
            self._f.flush()
            os.fsync(self._f.fileno())
        self._f.close()


def repair_wav(path: Path) -> bool:
    """Make a WAV file's header match its length; True if it had to be changed.

    Only files this module writes (44-byte PCM header) are touched; an odd
    trailing byte is dropped.
    """
    size = path.stat().st_size
    if size < HEADER_BYTES:
        return False
    with path.open("r+b") as f:
        head = f.read(HEADER_BYTES)
        if head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or head[36:40] != b"data":
            return False
        data = size - HEADER_BYTES
        if data % 2:
            f.truncate(size - 1)
            data -= 1
        riff, dsize = struct.unpack("<I", head[4:8])[0], struct.unpack("<I", head[40:44])[0]
        if riff == 36 + data and dsize == data:
            return False
        f.seek(4)
        f.write(struct.pack("<I", 36 + data))
        f.seek(40)
        f.write(struct.pack("<I", data))
    return True


def repair_directory(directory: Path) -> list[Path]:
    """Repair every recording under ``directory``; returns the files that were fixed."""
    fixed: list[Path] = []
    if not directory.exists():
        return fixed
    for p in sorted(directory.rglob("*.wav")):
        try:
            if repair_wav(p):
                fixed.append(p)
        except OSError:
            log.warning("could not repair a recording", extra={"path": str(p)})
    return fixed


class _Track:
    """One speaker's file: pending audio and where it stands on the timeline."""

    def __init__(self, writer: WavWriter, started_wall: float) -> None:
        self.writer = writer
        self.started_wall = started_wall
        self.pending = bytearray()
        self.queued = writer.samples  # samples written or waiting to be written


class CallRecorder:
    """Records every speaker of one call leg to its own incrementally written WAV file.

    Use as ``async with CallRecorder(directory=..., call_id=...) as rec:``;
    then :meth:`add_remote` for each remote track and :meth:`feed` for the
    local mic.

    Args:
        directory: The profile's recordings directory.
        call_id: The call; files go to ``directory/call_id/``.
        history: Where each new file is registered (``add_recording``).
        leg: ``call`` or ``consult``.
        sample_rate: Sample rate of the files.
        flush_interval_s: How often audio is written out (at most what a crash loses).
        clock: Wall clock used to align a reconnecting speaker.
    """

    def __init__(
        self,
        *,
        directory: Path,
        call_id: str,
        history: HistoryStore | None = None,
        leg: str = "call",
        sample_rate: int = SAMPLE_RATE,
        flush_interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", call_id):
            raise MediaError("call_id is not usable as a directory name")
        self.directory = directory / call_id
        self.call_id = call_id
        self.leg = leg
        self.sample_rate = sample_rate
        self._history = history
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._tracks: dict[str, _Track] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._readers: dict[str, asyncio.Task[None]] = {}  # identity -> its current track
        self._flusher: asyncio.Task[None] | None = None
        self._pool = writer_pool()
        self._closed = False

    @property
    def files(self) -> dict[str, Path]:
        """The file of each identity recorded so far."""
        return {k: t.writer.path for k, t in self._tracks.items()}

    async def start(self) -> CallRecorder:
        """Create the directory and start the periodic writer."""
        await asyncio.get_running_loop().run_in_executor(self._pool, _private_dir, self.directory)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="recorder-flush")
        return self

    async def _track(self, identity: str) -> _Track:
        track = self._tracks.get(identity)
        if track is not None:
            return track
        path = self.directory / f"{self.leg}-{safe_name(identity)}.wav"
        loop = asyncio.get_running_loop()
        try:
            writer = await loop.run_in_executor(
                self._pool, lambda: WavWriter(path, sample_rate=self.sample_rate)
            )
        except OSError as exc:
            raise MediaError(
                "could not open a recording file", details={"identity": identity}
            ) from exc
        track = self._tracks.get(identity)  # another caller may have won the race
        if track is not None:
            await loop.run_in_executor(self._pool, writer.close)
            return track
        track = _Track(writer, self._clock())
        self._tracks[identity] = track
        if self._history is not None:
            try:
                await self._history.add_recording(
                    self.call_id, identity, path, leg=self.leg, started_at=time.time()
                )
            except SoftphoneError as exc:
                log.warning("recording not registered", extra={"error": exc.message})
        return track

    def feed(self, identity: str, samples: np.ndarray[Any, Any] | bytes) -> None:
        """Append mono 16-bit samples of ``identity`` (at the recorder's rate).

        Call on the event loop's thread. The first call for an identity must
        follow :meth:`open_track` (or come through :meth:`add_remote`), which
        creates its file; audio for an unknown identity is dropped with a warning.
        """
        if self._closed:
            return
        track = self._tracks.get(identity)
        if track is None:
            log.warning(
                "audio for a speaker without a recording file", extra={"identity": identity}
            )
            return
        pcm = samples if isinstance(samples, bytes) else np.asarray(samples, np.int16).tobytes()
        track.pending += pcm
        track.queued += len(pcm) // 2

    async def open_track(self, identity: str, *, align: bool = True) -> Path:
        """Create (or reopen) ``identity``'s file; returns its path.

        With ``align``, silence fills the time since the file started that it
        holds no audio for (a reconnect), keeping it on the call's timeline.
        """
        track = await self._track(identity)
        if align:
            expected = round((self._clock() - track.started_wall) * self.sample_rate)
            gap = expected - track.queued
            if 0 < gap <= MAX_GAP_S * self.sample_rate:
                track.pending += bytes(2 * gap)
                track.queued += gap
        return track.writer.path

    def add_remote(self, audio: RemoteAudio) -> asyncio.Task[None]:
        """Record a remote participant's track until it ends (reconnects continue the file).

        A new track of an identity replaces the old one, whose reader stops, so
        two tracks never write into one file at once.
        """
        previous = self._readers.get(audio.identity)
        if previous is not None:
            previous.cancel()

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await previous
            await self.open_track(audio.identity)
            stream = audio.stream(sample_rate=self.sample_rate, frame_size_ms=100)
            try:
                async for ev in stream:
                    self.feed(audio.identity, bytes(ev.frame.data))
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

        task = asyncio.create_task(run(), name=f"recorder-{audio.sid}")
        self._readers[audio.identity] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending to the files now."""
        loop = asyncio.get_running_loop()
        for identity, track in list(self._tracks.items()):
            if not track.pending:
                continue
            data, track.pending = bytes(track.pending), bytearray()
            try:
                await loop.run_in_executor(self._pool, track.writer.write, data)
            except OSError:
                log.exception("recording write failed", extra={"identity": identity})

    async def aclose(self) -> None:
        """Stop reading tracks, write what is pending, close the files; idempotent."""
        if self._closed:
            return
        tasks = [t for t in (self._flusher, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closed = True
        await self.flush()
        loop = asyncio.get_running_loop()
        for track in self._tracks.values():
            await loop.run_in_executor(self._pool, track.writer.close)

    async def __aenter__(self) -> CallRecorder:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
