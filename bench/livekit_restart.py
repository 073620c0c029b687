"""LiveKit restart: how soon after the server is ready again a call has audio both ways.

Usage: ``./dev bench livekit_restart [--runs N] [--down S] [--baseline]``

A caller (440 Hz) and an agent (660 Hz) talk in one room of a local
``livekit-server``; the server is killed (SIGKILL), stays down ``--down``
seconds (a supervisor restarting a crashed server), and is started again on
the same ports. Measured per run: from the server answering again to both
directions carrying the other's tone on the new tracks (arrival times, one
clock). The sessions join afresh as soon as the server answers
(``RtcSession``'s rejoin); ``--baseline`` also measures sessions left to the
SDK's own reconnect (``rejoin=False``), for comparison. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.session import RemoteAudio, RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.server.token_minter import TokenMinter
from tests.audio_probe import Listener

CALLER_HZ = 440.0
AGENT_HZ = 660.0
# A run whose audio is not back by then counts as lost (reported, not measured).
GIVE_UP_S = 30.0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class _NewTracks:
    """Listens to every microphone track a session receives from now on."""

    def __init__(self, session: RtcSession) -> None:
        self.listeners: list[Listener] = []
        self._off = session.on("remote_audio", self._on_audio)

    def _on_audio(self, audio: RemoteAudio) -> None:
        if audio.name == "microphone":
            self.listeners.append(Listener(audio))

    def first(self, freq: float, after: float) -> float | None:
        times = [t for x in self.listeners if (t := x.capture.first_time_with(freq, after))]
        return min(times) if times else None

    async def aclose(self) -> None:
        self._off()
        for x in self.listeners:
            await x.aclose()


async def _restart_once(
    server: LocalLiveKitServer, caller: RtcSession, agent: RtcSession, down_s: float
) -> float | None:
    at_caller, at_agent = _NewTracks(caller), _NewTracks(agent)
    try:
        await server.restart(kill=True, down_s=down_s)
        ready = time.monotonic()
        while time.monotonic() < ready + GIVE_UP_S:
            await asyncio.sleep(0.05)
            heard_agent = at_caller.first(AGENT_HZ, ready)
            heard_caller = at_agent.first(CALLER_HZ, ready)
            if heard_agent is not None and heard_caller is not None:
                return (max(heard_agent, heard_caller) - ready) * 1000
        return None
    finally:
        await at_caller.aclose()
        await at_agent.aclose()


async def livekit_restart_gap(
    runs: int = 5, *, down_s: float = 2.0, rejoin: bool = True
) -> dict[str, Any]:
    """From the server being ready again to audio flowing both ways, over ``runs`` restarts.

    Args:
        runs: How many restarts.
        down_s: How long the server stays down each time.
        rejoin: The sessions join afresh by themselves (False: the SDK alone).

    Returns:
        ``{"p50": ms, "p95": ms, "max": ms, "runs": n, "lost": n}`` (``lost``:
        runs whose audio was not back within 30 s; not in the percentiles).
    """
    gaps: list[float] = []
    lost = 0
    async with LocalLiveKitServer(binary=ensure_server_binary()) as server:
        minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        room = f"bench-restart-{int(time.time())}"
        sessions = []
        tones = []
        try:
            for identity, role, freq in (
                ("caller-1", "caller", CALLER_HZ),
                ("agent-1", "agent", AGENT_HZ),
            ):
                token = minter.mint(role=role, identity=identity, room=room).token  # type: ignore[arg-type]
                session = RtcSession(url=server.url, token=token, rejoin=rejoin)
                await session.connect()
                source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
                tone = TonePlayer(source, freq=freq)
                tone.start()
                await session.publish_audio(source)
                sessions.append(session)
                tones.append(tone)
            caller, agent = sessions
            await caller.wait_for_audio("agent-1")
            await agent.wait_for_audio("caller-1")
            for _ in range(runs):
                await asyncio.sleep(1.0)  # settled
                gap = await _restart_once(server, caller, agent, down_s)
                if gap is None:
                    lost += 1
                else:
                    gaps.append(gap)
        finally:
            for s in sessions:
                await s.aclose()
            for t in tones:
                await t.aclose()
    return {
        "p50": round(statistics.median(gaps), 1) if gaps else None,
        "p95": round(pct(gaps, 95), 1) if gaps else None,
        "max": round(max(gaps), 1) if gaps else None,
        "runs": runs,
        "lost": lost,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--down", type=float, default=2.0, help="seconds the server stays down")
    parser.add_argument("--baseline", action="store_true", help="also measure the SDK alone")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 0 <= args.down <= 60:
        parser.error("--down must be between 0 and 60 seconds")
    result: dict[str, Any] = {
        "down_s": args.down,
        "ready_to_audio_ms": await livekit_restart_gap(args.runs, down_s=args.down),
    }
    if args.baseline:
        result["sdk_only_ready_to_audio_ms"] = await livekit_restart_gap(
            args.runs, down_s=args.down, rejoin=False
        )
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
