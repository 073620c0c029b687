"""Foundation numbers: livekit-server start-to-ready and loopback audio latency.

Usage: ``./dev bench foundation [--runs N] [--json] [--build]``

- start-to-ready: from spawning ``livekit-server --dev`` to its HTTP endpoint
  answering, over N fresh servers;
- audio latency: a publisher switches a 440 Hz tone on; the time until a
  subscriber in the same process receives it (publish to receive, one clock);
- with ``--build``: the time to build the pinned server from the Go module
  registry into a scratch cache (minutes; needs network to the Go proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import build_server_binary, ensure_server_binary
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def start_times(binary: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        async with LocalLiveKitServer(binary=binary) as server:
            assert server.startup_seconds is not None
            out.append(server.startup_seconds * 1000)
    return out


async def latencies(binary: Path, runs: int) -> list[float]:
    out = []
    async with LocalLiveKitServer(binary=binary) as server:
        minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        for i in range(runs):
            room = f"bench-{i}"
            a = minter.mint(role="caller", identity="pub", room=room)
            b = minter.mint(role="agent", identity="sub", room=room)
            async with (
                RtcSession(url=server.url, token=a.token) as sa,
                RtcSession(url=server.url, token=b.token) as sb,
            ):
                source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
                await sa.publish_audio(source)
                tone = TonePlayer(source, freq=0.0)
                tone.start()
                listener = Listener(await sb.wait_for_audio("pub"))
                await asyncio.sleep(0.8)
                switched = tone.set_freq(440.0)
                await asyncio.sleep(0.6)
                await tone.aclose()
                await listener.aclose()
            onset = listener.capture.first_time_with(440.0, after=switched - 0.2)
            if onset is not None:
                out.append((onset - switched) * 1000)
    return out


def build_time() -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        started = time.monotonic()
        build_server_binary(env)
        return time.monotonic() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--build", action="store_true", help="also time a fresh server build")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    binary = ensure_server_binary()
    starts = await start_times(binary, args.runs)
    lat = await latencies(binary, args.runs)
    result: dict[str, object] = {
        "server_start_ms": {
            "p50": round(statistics.median(starts), 1),
            "p95": round(pct(starts, 95), 1),
        },
        "audio_latency_ms": {
            "p50": round(statistics.median(lat), 1) if lat else None,
            "p95": round(pct(lat, 95), 1) if lat else None,
            "measured": len(lat),
            "runs": args.runs,
        },
    }
    if args.build:
        result["server_build_s"] = round(build_time(), 1)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'metric':<34}{'p50':>10}{'p95':>10}")
    print(
        f"{'server start-to-ready (ms)':<34}{result['server_start_ms']['p50']:>10}{result['server_start_ms']['p95']:>10}"
    )  # type: ignore[index]
    al = result["audio_latency_ms"]
    print(f"{'audio publish-to-receive (ms)':<34}{al['p50']!s:>10}{al['p95']!s:>10}")  # type: ignore[index]
    if "server_build_s" in result:
        print(f"{'server build from Go registry (s)':<34}{result['server_build_s']:>10}")


if __name__ == "__main__":
    asyncio.run(main())
