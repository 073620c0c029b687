"""Fixtures and helpers for the backend's operational tests: audio files, metrics, waiting.

Audio is real: speech from espeak-ng, Ogg/Opus encoded with PyAV (libopus),
and an Ogg file whose last page lies about the length (its granule position
rewritten, the page checksum made right again), as an attacker would send.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import av
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

OPUS_RATE = 48_000
# Samples Opus encoders put before the audio (the Ogg header's pre-skip).
_PRE_SKIP = 312


async def espeak_wav(path: Path, text: str) -> bytes:
    """``text`` spoken by espeak-ng, as WAV bytes."""
    proc = await asyncio.create_subprocess_exec("espeak-ng", "-w", str(path), text)
    assert await proc.wait() == 0
    return path.read_bytes()


def tone_ogg(seconds: float, *, freq: float = 440.0) -> bytes:
    """An Ogg/Opus file of a tone lasting ``seconds`` (mono, 48 kHz)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=OPUS_RATE)
        stream.layout = "mono"
        step, total, at = 960, int(seconds * OPUS_RATE), 0
        while at < total:
            t = np.arange(at, at + step) / OPUS_RATE
            samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate = OPUS_RATE
            frame.pts = at
            for packet in stream.encode(frame):
                out.mux(packet)
            at += step
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected)."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[((crc >> 24) & 0xFF) ^ byte]
    return crc


def lying_ogg(data: bytes, *, claimed_s: float) -> bytes:
    """``data`` (Ogg/Opus) with its last page claiming the stream ends at ``claimed_s``.

    Demuxers read an Ogg file's length from its last page's granule position;
    every packet is still there.
    """
    start = 0
    last = 0
    while start < len(data):
        assert data[start : start + 4] == b"OggS", "not an Ogg page"
        segments = data[start + 26]
        size = 27 + segments + sum(data[start + 27 : start + 27 + segments])
        last, start = start, start + size
    page = bytearray(data[last:])
    struct.pack_into("<q", page, 6, int(claimed_s * OPUS_RATE) + _PRE_SKIP)
    struct.pack_into("<I", page, 22, 0)
    struct.pack_into("<I", page, 22, _ogg_crc(bytes(page)))
    return data[:last] + bytes(page)


def declared_seconds(data: bytes) -> float:
    """The length a demuxer reads from the file's header (what PyAV reports)."""
    with av.open(io.BytesIO(data), "r") as container:
        return float(container.duration or 0) / 1_000_000


def decoded_seconds(data: bytes) -> float:
    """The length of the audio actually in the file, by decoding all of it."""
    with av.open(io.BytesIO(data), "r") as container:
        return sum(float(f.samples) / f.sample_rate for f in container.decode(audio=0))


async def metrics(
    http: httpx.AsyncClient, key: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET /metrics``: (name, labels) -> value."""
    res = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def sample(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return values.get((name, frozenset(labels.items())), 0.0)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    """Wait until ``await check()`` is true (generous: the machine is shared)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
