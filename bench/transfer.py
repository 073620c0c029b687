"""Warm-transfer numbers on one local LiveKit server.

Usage: ``./dev bench transfer [--runs N] [--concurrent 10,25] [--json]``

(a) complete -> audio: from A calling ``complete()`` to the caller's tone
    (440 Hz) arriving at B in the new room;
(b) the longest audio gap heard by the caller (hold tone in R1, then B's tone
    in R2) and by B (A's voice during the consult, then the caller's) across
    the move, with make-before-break;
(c) the same for the naive strategy (the caller disconnects, then connects);
(d) N concurrent transfers: calls set up and transfers started a few at a
    time (SETUP_AT_ONCE), all N then in flight together (hold audio, offers
    accepted, consulting) and completed at once: complete -> audio p50/p95
    and failures (a transfer that did not complete, or whose caller was not
    heard by B within AUDIO_TIMEOUT_S). Failure reasons go to stderr.

With ``--json`` one JSON object is printed with exactly the keys
``complete_to_audio_ms``, ``naive_complete_to_audio_ms`` ({p50, p95}),
``caller_gap_ms``, ``agent_b_gap_ms``, ``naive_caller_gap_ms`` ({p50, p95, max})
and ``concurrent`` ([{n, p50_ms, p95_ms, failures}]).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.services.local_server import LocalLiveKitServer
from softphone.services.room_admin import RoomAdmin
from softphone.services.server_binary import ensure_server_binary
from softphone.services.token_minter import TokenMinter
from softphone.services.transfer_orchestrator import HOLD_FREQ_HZ, TransferOrchestrator
from softphone.services.transfer_participants import AgentLobby, CallerMover, MoveStrategy
from softphone.services.transfer_service import TransferRequest
from softphone.speech.offline_summarizer import OfflineSummarizer
from tests.audio_probe import WINDOW_MS, Capture, Listener, tone_level

CALLER_HZ, A_HZ, B_HZ = 440.0, 660.0, 880.0
THRESHOLD = 0.05
GAP_WINDOW_S = 2.5
AUDIO_TIMEOUT_S = 10.0
SETUP_AT_ONCE = 4


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def audible_times(cap: Capture, freqs: tuple[float, ...]) -> list[float]:
    """Arrival times of the windows carrying any of ``freqs``."""
    return [t for t, w in cap.windows() if any(tone_level(w, f) > THRESHOLD for f in freqs)]


def longest_gap_ms(times: list[float], start: float, end: float) -> float:
    """Longest stretch without audible audio between ``start`` and ``end``."""
    pts = sorted(t for t in times if start <= t <= end)
    if not pts:
        return (end - start) * 1000
    edges = [start, *pts, end]
    gap = max(b - a for a, b in itertools.pairwise(edges))
    return max(0.0, gap * 1000 - WINDOW_MS)


class Ears:
    """Attaches a Listener to every remote audio track of a session as it arrives."""

    def __init__(self, session: RtcSession) -> None:
        self.found: list[Listener] = []
        self._task = asyncio.get_running_loop().create_task(self._run(session))

    async def _run(self, session: RtcSession) -> None:
        async for audio in session.remote_audio():
            self.found.append(Listener(audio))

    def times(self, freqs: tuple[float, ...]) -> list[float]:
        """Arrival times of audible windows on any track."""
        return [t for lst in self.found for t in audible_times(lst.capture, freqs)]

    def first(self, freq: float, after: float) -> float | None:
        """First arrival of ``freq`` after ``after`` on any track."""
        hits = [lst.capture.first_time_with(freq, after) for lst in self.found]
        found = [h for h in hits if h is not None]
        return min(found) if found else None

    async def aclose(self) -> None:
        """Stop listening."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for lst in self.found:
            await lst.aclose()


@dataclasses.dataclass
class Result:
    complete_to_audio_ms: float | None
    caller_gap_ms: float
    b_gap_ms: float
    ok: bool


class Bench:
    def __init__(self, server: LocalLiveKitServer, rooms: RoomAdmin) -> None:
        self.server = server
        self.minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
        self.lobby = "bench-lobby"
        self.service = TransferOrchestrator(
            url=server.url,
            rooms=rooms,
            minter=self.minter,
            summarizer=OfflineSummarizer(),
            fallback_summarizer=OfflineSummarizer(),
            lobby_room=self.lobby,
            offer_timeout_s=30,
            move_timeout_s=15,
            join_timeout_s=20,
            poll_interval_s=0.5,
        )

    async def _session(self, role: str, identity: str, room: str) -> RtcSession:
        token = self.minter.mint(role=role, identity=identity, room=room).token  # type: ignore[arg-type]
        return await RtcSession(url=self.server.url, token=token, connect_timeout_s=30).connect()

    async def one(
        self,
        strategy: MoveStrategy,
        *,
        measure_gaps: bool,
        start_gate: asyncio.Event | None = None,
        setup: asyncio.Semaphore | None = None,
    ) -> Result:
        """One warm transfer; returns its numbers."""
        tag = uuid.uuid4().hex[:8]
        room, c_id, a_id, b_id = f"bench-{tag}", f"c-{tag}", f"a-{tag}", f"b-{tag}"
        players: list[TonePlayer] = []

        def tone(freq: float) -> rtc.AudioSource:
            src = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
            player = TonePlayer(src, freq)
            player.start()
            players.append(player)
            return src

        if setup is not None:
            # Calls are set up a few at a time; the transfers then run together.
            await setup.acquire()
        caller_src = tone(CALLER_HZ)
        a_src = tone(A_HZ) if measure_gaps else None
        b_src = tone(B_HZ) if measure_gaps else None
        closers: list[Any] = []
        try:
            c_sess = await self._session("caller", c_id, room)
            await c_sess.publish_audio(caller_src)
            mover = CallerMover(session=c_sess, mic=caller_src, strategy=strategy)
            closers.append(mover)
            a_sess = await self._session("agent", a_id, room)
            closers.append(a_sess)
            lobby = AgentLobby(
                lobby_token=self.minter.mint(role="agent", identity=b_id, room=self.lobby).token,
                url=self.server.url,
                service=self.service,
                mic=b_src,
            )
            closers.append(lobby)
            offers: asyncio.Queue[Any] = asyncio.Queue()
            lobby.on("offer", offers.put_nowait)
            await lobby.start()
            # Listen to everything the caller hears in R1 (hold) and, once it joins, R2.
            caller_listeners: list[Ears] = []
            if measure_gaps:
                caller_listeners.append(Ears(c_sess))
                mover.on("joined", lambda s: caller_listeners.append(Ears(s)))
            ticket = await self.service.start_transfer(
                TransferRequest(caller=c_id, from_agent=a_id, to_agent=b_id, call_room=room)
            )
            offer = await asyncio.wait_for(offers.get(), 30)
            b_sess = await lobby.accept(offer.transfer_id)
            b_ears = Ears(b_sess)
            consult = None
            if measure_gaps and ticket.consult_token is not None:
                consult = await RtcSession(
                    url=self.server.url, token=ticket.consult_token.token
                ).connect()
                closers.append(consult)
                assert a_src is not None
                await consult.publish_audio(a_src)
            await self.service.wait_for_phase(ticket.transfer_id, ["consulting"], timeout_s=30)
            if setup is not None:
                setup.release()
                setup = None
            await asyncio.sleep(1.0)  # steady state: hold in R1, consult in R2
            if start_gate is not None:
                await start_gate.wait()
            t0 = time.monotonic()
            snap = await self.service.complete(ticket.transfer_id, agent=a_id)
            # Gaps: a fixed window across the move. Otherwise: until the
            # caller is heard at B (at most AUDIO_TIMEOUT_S), then stop
            # decoding, which keeps N concurrent transfers cheap to observe.
            end = t0 + (GAP_WINDOW_S if measure_gaps else AUDIO_TIMEOUT_S)
            while time.monotonic() < end:
                await asyncio.sleep(0.05)
                if not measure_gaps and b_ears.first(CALLER_HZ, t0) is not None:
                    break
            ok = snap.phase == "completed"
            onset = b_ears.first(CALLER_HZ, t0)
            c2a = (onset - t0) * 1000 if onset is not None else None
            caller_gap = b_gap = 0.0
            if measure_gaps:
                heard = [
                    t for lst in caller_listeners for t in lst.times((HOLD_FREQ_HZ, A_HZ, B_HZ))
                ]
                b_onset = max([lst.first(B_HZ, t0) or t0 for lst in caller_listeners] + [t0])
                caller_gap = longest_gap_ms(heard, t0, max(b_onset, t0) + 0.3)
                b_heard = b_ears.times((A_HZ, CALLER_HZ))
                b_gap = longest_gap_ms(b_heard, t0, (onset or end) + 0.3)
            for lst in [*caller_listeners, b_ears]:
                await lst.aclose()
            return Result(c2a, caller_gap, b_gap, ok and c2a is not None)
        finally:
            if setup is not None:
                setup.release()
            for c in reversed(closers):
                with contextlib.suppress(Exception):
                    await c.aclose()
            for p in players:
                await p.aclose()


async def run(runs: int, concurrent: list[int]) -> dict[str, Any]:
    binary = ensure_server_binary()
    async with (
        LocalLiveKitServer(binary=binary) as server,
        RoomAdmin(url=server.url, api_key=server.api_key, api_secret=server.api_secret) as rooms,
    ):
        bench = Bench(server, rooms)
        async with bench.service:
            mbb = [await bench.one("make_before_break", measure_gaps=True) for _ in range(runs)]
            naive = [await bench.one("break_before_make", measure_gaps=True) for _ in range(runs)]
            conc = []
            for n in concurrent:
                gate = asyncio.Event()
                setup = asyncio.Semaphore(SETUP_AT_ONCE)
                tasks = [
                    asyncio.create_task(
                        bench.one(
                            "make_before_break", measure_gaps=False, start_gate=gate, setup=setup
                        )
                    )
                    for _ in range(n)
                ]
                # Everyone reaches consulting, then all complete at once.
                await asyncio.sleep(0)
                waiter = asyncio.gather(*tasks, return_exceptions=True)
                await _open_gate_when_ready(bench, gate, n)
                results = await waiter
                for r in results:
                    if not (isinstance(r, Result) and r.ok):
                        print(f"n={n} failure: {r!r}", file=sys.stderr)
                good = [r for r in results if isinstance(r, Result) and r.ok]
                times = [r.complete_to_audio_ms for r in good if r.complete_to_audio_ms is not None]
                conc.append(
                    {
                        "n": n,
                        "p50_ms": round(pct(times, 50), 1),
                        "p95_ms": round(pct(times, 95), 1),
                        "failures": n - len(good),
                    }
                )

    def two(rs: list[Result]) -> dict[str, float]:
        v = [r.complete_to_audio_ms for r in rs if r.complete_to_audio_ms is not None]
        return {"p50": round(pct(v, 50), 1), "p95": round(pct(v, 95), 1)}

    def three(v: list[float]) -> dict[str, float]:
        top = max(v) if v else float("nan")
        return {"p50": round(pct(v, 50), 1), "p95": round(pct(v, 95), 1), "max": round(top, 1)}

    return {
        "complete_to_audio_ms": two(mbb),
        "naive_complete_to_audio_ms": two(naive),
        "caller_gap_ms": three([r.caller_gap_ms for r in mbb]),
        "agent_b_gap_ms": three([r.b_gap_ms for r in mbb]),
        "naive_caller_gap_ms": three([r.caller_gap_ms for r in naive]),
        "concurrent": conc,
    }


async def _open_gate_when_ready(bench: Bench, gate: asyncio.Event, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        consulting = [r for r in bench.service._runs.values() if r.transfer.phase == "consulting"]
        if len(consulting) >= n:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    gate.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="single transfers per strategy")
    parser.add_argument("--concurrent", default="10,25", help="comma-separated N values")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    conc = [int(x) for x in args.concurrent.split(",") if x.strip()]
    out = asyncio.run(run(args.runs, conc))
    if args.json:
        print(json.dumps(out))
        return
    print(f"{'metric':34} {'p50':>8} {'p95':>8} {'max':>8}")
    for key in (
        "complete_to_audio_ms",
        "naive_complete_to_audio_ms",
        "caller_gap_ms",
        "agent_b_gap_ms",
        "naive_caller_gap_ms",
    ):
        v = out[key]
        print(f"{key:34} {v['p50']:>8} {v['p95']:>8} {v.get('max', ''):>8}")
    print(f"\n{'concurrent n':14} {'p50_ms':>8} {'p95_ms':>8} {'failures':>9}")
    for row in out["concurrent"]:
        print(f"{row['n']:<14} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['failures']:>9}")


if __name__ == "__main__":
    main()
