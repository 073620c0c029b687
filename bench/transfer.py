"""Warm-transfer numbers on one local LiveKit server.

Usage: ``./dev bench transfer [--runs N] [--concurrent 10,25] [--json]``

(a) complete -> audio: from A calling ``complete()`` to the caller's tone
    (440 Hz) arriving at B in the new room;
(b) the longest audio gap heard by the caller (hold tone in R1, then B's tone
    in R2) and by B (A's voice during the consult, then the caller's) across
    the move, with make-before-break;
(c) the same for the naive strategy (the caller disconnects, then connects);
(d) N concurrent transfers, run the way they run in reality: the service
    (orchestrator behind the real backend app, under uvicorn) in this process,
    the client apps (caller, A, B for each call) in child processes of this
    script (``--worker``; one per CALLS_PER_WORKER calls), reporting JSON
    lines. Calls are set up a few at a time (SETUP_AT_ONCE in all, paced by
    this process), all N then in flight together (hold audio, offers
    accepted, consulting, callers on standby) and completed at once:
    complete -> audio p50/p95 (both ends measured with ``time.monotonic`` in
    the worker of that call) and failures (a transfer that did not complete,
    or whose caller was not heard by B within AUDIO_TIMEOUT_S). Failure
    reasons go to stderr. The clients send only the audio measured here (the
    caller's voice in R2); every published track, silent or muted, costs
    this machine an Opus encoder.

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
import math
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.backend.app import KeyRing, Principal, create_app
from softphone.client.caller_mover import CallerMover, MoveStrategy
from softphone.client.commands import CommandGuard
from softphone.client.lobby import AgentLobby
from softphone.client.remote_service import RemoteTransferService
from softphone.config import Secret
from softphone.errors import MediaError
from softphone.infra.local_server import LocalLiveKitServer, free_port
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.session import RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import TransferRequest
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import TokenMinter
from softphone.server.transfer_orchestrator import HOLD_FREQ_HZ, TransferOrchestrator
from softphone.speech.offline_summarizer import OfflineSummarizer
from tests.audio_probe import WINDOW_MS, Capture, Listener, tone_level

CALLER_HZ, A_HZ, B_HZ = 440.0, 660.0, 880.0
THRESHOLD = 0.05
GAP_WINDOW_S = 2.5
AUDIO_TIMEOUT_S = 10.0
log = logging.getLogger("softphone.bench")
SETUP_AT_ONCE = 2
SETUP_ATTEMPTS = 3
CALLS_PER_WORKER = 3
READY_TIMEOUT_S = 180.0
WORKER_FRAME_MS = 100
# The frames a worker's Onset reads (see Onset).
WORKER_ONSET_MS = 20


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


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

    async def one(self, strategy: MoveStrategy) -> Result:
        """One warm transfer, every party sending a tone; returns its numbers."""
        tag = uuid.uuid4().hex[:8]
        c_id, a_id, b_id = f"c-{tag}", f"a-{tag}", f"b-{tag}"
        # The call is the service's (its registry names the room), as in the apps.
        room = (await self.service.create_call(caller=c_id, agent=a_id, requester=c_id)).call.room
        players: list[TonePlayer] = []

        def tone(freq: float) -> rtc.AudioSource:
            src = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
            player = TonePlayer(src, freq)
            player.start()
            players.append(player)
            return src

        caller_src = tone(CALLER_HZ)
        a_src = tone(A_HZ)
        b_src = tone(B_HZ)
        closers: list[Any] = []
        try:
            c_sess = await self._session("caller", c_id, room)
            await c_sess.publish_audio(caller_src)
            guard = CommandGuard(await self.service.service_info())
            mover = CallerMover(session=c_sess, mic=caller_src, guard=guard, strategy=strategy)
            closers.append(mover)
            a_sess = await self._session("agent", a_id, room)
            closers.append(a_sess)
            lobby = AgentLobby(
                lobby_token=self.minter.mint(role="agent", identity=b_id, room=self.lobby).token,
                url=self.server.url,
                service=self.service,
                guard=guard,
                mic=b_src,
            )
            closers.append(lobby)
            offers: asyncio.Queue[Any] = asyncio.Queue()
            lobby.on("offer", offers.put_nowait)
            await lobby.start()
            # Listen to everything the caller hears in R1 (hold) and, once it joins, R2.
            caller_listeners = [Ears(c_sess)]
            mover.on("joined", lambda s: caller_listeners.append(Ears(s)))
            ticket = await self.service.start_transfer(
                TransferRequest(caller=c_id, from_agent=a_id, to_agent=b_id, call_room=room)
            )
            offer = await asyncio.wait_for(offers.get(), 30)
            b_sess = await lobby.accept(offer.transfer_id)
            b_ears = Ears(b_sess)
            if ticket.consult_token is not None:
                consult = await RtcSession(
                    url=self.server.url, token=ticket.consult_token.token
                ).connect()
                closers.append(consult)
                await consult.publish_audio(a_src)
            await self.service.wait_for_phase(ticket.transfer_id, ["consulting"], timeout_s=30)
            await asyncio.sleep(1.0)  # steady state: hold in R1, consult in R2
            t0 = time.monotonic()
            snap = await self.service.complete(ticket.transfer_id, agent=a_id)
            # Gaps: a fixed window across the move.
            end = t0 + GAP_WINDOW_S
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            ok = snap.phase == "completed"
            onset = b_ears.first(CALLER_HZ, t0)
            c2a = (onset - t0) * 1000 if onset is not None else None
            heard = [t for lst in caller_listeners for t in lst.times((HOLD_FREQ_HZ, A_HZ, B_HZ))]
            b_onset = max([lst.first(B_HZ, t0) or t0 for lst in caller_listeners] + [t0])
            caller_gap = longest_gap_ms(heard, t0, max(b_onset, t0) + 0.3)
            b_gap = longest_gap_ms(b_ears.times((A_HZ, CALLER_HZ)), t0, (onset or end) + 0.3)
            for lst in [*caller_listeners, b_ears]:
                await lst.aclose()
            return Result(c2a, caller_gap, b_gap, ok and c2a is not None)
        finally:
            await _close_all(closers, players)


async def run(runs: int, concurrent: list[int], workers: int = 0) -> dict[str, Any]:
    binary = ensure_server_binary()
    async with (
        LocalLiveKitServer(binary=binary) as server,
        RoomAdmin(url=server.url, api_key=server.api_key, api_secret=server.api_secret) as rooms,
    ):
        bench = Bench(server, rooms)
        async with bench.service:
            mbb = [await bench.one("make_before_break") for _ in range(runs)]
            naive = [await bench.one("break_before_make") for _ in range(runs)]
            conc = [await concurrent_run(bench, n, workers) for n in concurrent]

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


class Onset:
    """Time of the first frame carrying ``freq`` on any remote track of a session.

    Cheap on purpose (many calls per process): one dot product per frame with
    a precomputed reference, and reading stops at the first hit. Frames are
    ``frame_ms`` long (10 by default; the concurrent workers read 20 ms
    frames, as the app's speaker does, which halves the SDK's frame events
    in processes holding many calls and adds at most 10 ms to a time).
    """

    def __init__(self, session: RtcSession, freq: float, *, frame_ms: int = WINDOW_MS) -> None:
        n = SAMPLE_RATE * frame_ms // 1000
        self._frame_ms = frame_ms
        self._ref = np.exp(-2j * np.pi * freq * np.arange(n) / SAMPLE_RATE) / 32768.0
        self.after = float("inf")
        self.found = asyncio.get_running_loop().create_future()
        # Per track read ("identity/name/sid"): frames after ``after``, their
        # peak tone level and RMS; says why nothing was found.
        self.read: dict[str, list[float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch(session)))

    async def _watch(self, session: RtcSession) -> None:
        async for audio in session.remote_audio():
            stream = audio.stream(frame_size_ms=self._frame_ms)
            stats = self.read.setdefault(f"{audio.identity}/{audio.name}/{audio.sid}", [0, 0, 0])
            self._tasks.append(asyncio.get_running_loop().create_task(self._read(stream, stats)))

    async def _read(self, stream: rtc.AudioStream, stats: list[float]) -> None:
        try:
            async for ev in stream:
                now = time.monotonic()
                if now < self.after or self.found.done():
                    continue
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16)
                if len(pcm) == len(self._ref):
                    level = 2 * abs(np.dot(pcm, self._ref)) / len(pcm)
                    stats[0] += 1
                    stats[1] = max(stats[1], level)
                    stats[2] = max(stats[2], float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))))
                    if level > THRESHOLD:
                        self.found.set_result(now)
                        return
        finally:
            await stream.aclose()

    async def wait(self, after: float, timeout_s: float) -> float | None:
        """The first arrival at or after ``after``, or None within ``timeout_s``."""
        self.after = after
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self.found), timeout_s)
        return None

    async def aclose(self) -> None:
        """Stop reading."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _close_all(closers: list[Any], players: list[TonePlayer]) -> None:
    """Leave every room (last opened first), then stop the tone players."""
    for c in reversed(closers):
        with contextlib.suppress(Exception):
            await c.aclose()
    for p in players:
        await p.aclose()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _join_lobby(
    token: str,
    url: str,
    service: RemoteTransferService,
    mic: rtc.AudioSource | None,
    offers: asyncio.Queue[Any],
    guard: CommandGuard,
) -> AgentLobby:
    """B online in the lobby.

    Setting the call up comes before any transfer, so a lobby join that timed
    out on the loaded machine is tried again (SETUP_ATTEMPTS) rather than
    counted as a failed transfer.
    """
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        lobby = AgentLobby(lobby_token=token, url=url, service=service, guard=guard, mic=mic)
        lobby.on("offer", offers.put_nowait)
        try:
            return await lobby.start()
        except MediaError:
            await lobby.aclose()
            if attempt == SETUP_ATTEMPTS:
                raise
            print("setup: lobby join timed out; trying again", file=sys.stderr)
    raise AssertionError("unreachable")


async def _worker_call(
    cfg: dict[str, Any], call: dict[str, Any], setup: asyncio.Event, go: asyncio.Event
) -> None:
    """One call in a worker: the caller's, A's and B's apps, as real clients of the backend.

    Set up once the parent says so (``setup``), reports ``ready`` once
    consulting (or failed), completes on ``go``.
    """
    url, tag = cfg["url"], call["tag"]
    # Only what is measured here is sent: the caller's voice (B's is measured
    # in the single transfers). 100 ms frames: fewer wake-ups per caller.
    src = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=2 * WORKER_FRAME_MS)
    players = [TonePlayer(src, CALLER_HZ, frame_ms=WORKER_FRAME_MS)]
    closers: list[Any] = []
    stage = "setup"
    ready = False
    try:
        await setup.wait()
        for p in players:
            p.start()
        a_svc = RemoteTransferService(
            base_url=cfg["backend"], api_key=Secret(call["a_key"]), timeout_s=30
        )
        b_svc = RemoteTransferService(
            base_url=cfg["backend"], api_key=Secret(call["b_key"]), timeout_s=30
        )
        closers += [a_svc, b_svc]
        stage = "caller joins R1"
        c_sess = await RtcSession(url=url, token=call["c_token"], connect_timeout_s=30).connect()
        # The caller's mic goes out where it is measured: in R2 (on standby,
        # muted until the move). Every published track costs this machine an
        # encoder, silent or not; the single transfers cover R1.
        guard = CommandGuard(await a_svc.service_info())
        mover = CallerMover(session=c_sess, mic=src, guard=guard)
        closers.append(mover)
        marks: dict[str, float] = {}
        mover.on("joined", lambda _: marks.setdefault("caller in R2", time.monotonic()))
        mover.on("moved", lambda _: marks.setdefault("caller left R1", time.monotonic()))
        stage = "A joins R1"
        closers.append(
            # A is not measured here: its app in R1 receives nothing (one
            # stream fewer to forward and decode per call on this machine).
            await RtcSession(
                url=url, token=call["a_token"], connect_timeout_s=30, listen=False
            ).connect()
        )
        stage = "B joins the lobby"
        offers: asyncio.Queue[Any] = asyncio.Queue()
        lobby = await _join_lobby(call["b_token"], url, b_svc, None, offers, guard)
        closers.append(lobby)
        stage = "start_transfer"
        ticket = await a_svc.start_transfer(
            TransferRequest(
                caller=call["c"], from_agent=call["a"], to_agent=call["b"], call_room=call["room"]
            )
        )
        stage = "offer"
        offer = await asyncio.wait_for(offers.get(), 30)
        stage = "accept"
        b_sess = await lobby.accept(offer.transfer_id)
        onset = Onset(b_sess, CALLER_HZ, frame_ms=WORKER_ONSET_MS)
        closers.append(onset)
        stage = "consulting"
        await a_svc.wait_for_phase(ticket.transfer_id, ["consulting"], timeout_s=30)
        ready = True
        _emit({"ready": tag})
        await go.wait()
        stage = "complete"
        t0 = onset.after = time.monotonic()
        snap = await a_svc.complete(ticket.transfer_id, agent=call["a"])
        stage = "caller heard by B"
        done = time.monotonic()
        heard = await onset.wait(t0, max(0.0, t0 + AUDIO_TIMEOUT_S - time.monotonic()))
        ok = snap.phase == "completed" and heard is not None
        error = "" if ok else f"{snap.phase} {snap.reason}, caller heard: {heard is not None}"
        marks["complete() returned"] = done
        steps = ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in sorted(marks.items()))
        error += f" (strategy {snap.strategy}; {steps})"
        _emit({"result": tag, "t0": t0, "heard": heard, "ok": ok, "error": error, "steps": steps})
    except Exception as exc:  # every failure is reported, with its stage
        _emit({"result": tag, "ok": False, "error": f"{stage}: {exc!r}"})
        if not ready:
            _emit({"ready": tag})
    finally:
        await _close_all(closers, players)


WorkerCall = Callable[
    [dict[str, Any], dict[str, Any], asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]
]


async def worker(run_call: WorkerCall | None = None) -> None:
    """Worker mode (the other side of :func:`run_workers`): read the config
    line, run ``run_call(cfg, call, setup, go)`` for each of its calls, and
    set their events on ``setup TAG`` and ``go`` lines."""
    run_call = run_call or _worker_call
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cfg = json.loads(await reader.readline())
    go = asyncio.Event()
    setups = {call["tag"]: asyncio.Event() for call in cfg["calls"]}
    calls = [
        asyncio.create_task(run_call(cfg, call, setups[call["tag"]], go)) for call in cfg["calls"]
    ]

    async def commands() -> None:
        async for line in reader:
            word, _, tag = line.decode().strip().partition(" ")
            if word == "setup" and tag in setups:
                setups[tag].set()
            elif word == "go":
                go.set()

    listening = asyncio.create_task(commands())
    await asyncio.gather(*calls, return_exceptions=True)
    listening.cancel()


async def run_workers(
    script: Path,
    calls: list[dict[str, Any]],
    cfg: dict[str, Any],
    *,
    n: int,
    results_timeout_s: float,
) -> dict[str, dict[str, Any]]:
    """Drive the client worker processes of the concurrent rows; their results by call tag.

    One ``script --worker`` process per worker number in ``calls``; each gets
    ``cfg`` and its calls as the first line on stdin (keys never on a command
    line). Calls are set up ``SETUP_AT_ONCE`` at a time across all workers;
    once all ``n`` are ready (or ``READY_TIMEOUT_S`` passed) and a second of
    steady state went by, every worker is told ``go``. Workers still busy
    after ``results_timeout_s`` are killed; their calls have no result.
    """
    procs: list[asyncio.subprocess.Process] = []
    results: dict[str, dict[str, Any]] = {}
    readers: list[asyncio.Task[None]] = []
    ready: set[str] = set()
    all_ready = asyncio.Event()
    waiting = [str(c["tag"]) for c in calls]  # not set up yet, in order
    proc_of: dict[str, asyncio.subprocess.Process] = {}
    in_setup: set[str] = set()

    def set_up_next() -> None:
        # At most SETUP_AT_ONCE calls are being set up, across all workers.
        while waiting and len(in_setup) < SETUP_AT_ONCE:
            tag = waiting.pop(0)
            in_setup.add(tag)
            stdin = proc_of[tag].stdin
            assert stdin is not None
            stdin.write(f"setup {tag}\n".encode())

    async def read(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                msg = json.loads(line)
                if "ready" in msg:
                    ready.add(msg["ready"])
                    in_setup.discard(msg["ready"])
                    set_up_next()
                    if len(ready) >= n:
                        all_ready.set()
                elif "result" in msg:
                    results[msg["result"]] = msg

    try:
        for w in sorted({int(c["worker"]) for c in calls}):
            mine = [c for c in calls if c["worker"] == w]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                "--worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps({**cfg, "calls": mine}) + "\n").encode())
            await proc.stdin.drain()
            proc_of.update((c["tag"], proc) for c in mine)
            readers.append(asyncio.create_task(read(proc)))
        set_up_next()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_ready.wait(), READY_TIMEOUT_S)
        await asyncio.sleep(1.0)  # steady state: consulting in R2, callers on standby
        for proc in procs:
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError):
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
        try:
            await asyncio.wait_for(
                asyncio.gather(*readers, return_exceptions=True), results_timeout_s
            )
        except TimeoutError:  # calls without a result by now count as failed
            print(f"n={n}: workers still busy after the deadline; stopping them", file=sys.stderr)
    finally:
        for task in readers:
            task.cancel()
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
    return results


async def concurrent_run(bench: Bench, n: int, workers: int) -> dict[str, Any]:
    """N transfers at once, clients in worker processes; returns one table row.

    ``workers`` 0: one process per CALLS_PER_WORKER calls. Fewer, fuller
    processes cost more than their share: the SDK hands every event of a
    process to every stream and room of it.
    """
    workers = workers or math.ceil(n / CALLS_PER_WORKER)
    calls: list[dict[str, Any]] = []
    keys: dict[str, Principal] = {}
    for i in range(n):
        tag = uuid.uuid4().hex[:8]
        c, a, b = f"c-{tag}", f"a-{tag}", f"b-{tag}"
        room = (await bench.service.create_call(caller=c, agent=a, requester=c)).call.room
        a_key, b_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        keys[a_key] = Principal(a, "agent")
        keys[b_key] = Principal(b, "agent")
        mint = bench.minter.mint
        calls.append(
            {
                "worker": i % workers,
                "tag": tag,
                "room": room,
                "c": c,
                "a": a,
                "b": b,
                "a_key": a_key,
                "b_key": b_key,
                "c_token": mint(role="caller", identity=c, room=room).token,
                "a_token": mint(role="agent", identity=a, room=room).token,
                "b_token": mint(role="agent", identity=b, room=bench.lobby).token,
            }
        )
    port = free_port()
    app = create_app(service=bench.service, keys=KeyRing(keys))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="off",
            # Requests of killed workers must not keep the bench from ending.
            timeout_graceful_shutdown=5,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        cfg = {"url": bench.server.url, "backend": f"http://127.0.0.1:{port}"}
        results = await run_workers(
            Path(__file__).resolve(), calls, cfg, n=n, results_timeout_s=AUDIO_TIMEOUT_S + 120
        )
    finally:
        server.should_exit = True
        await serving
    times = []
    for call in calls:
        r = results.get(call["tag"], {"ok": False, "error": "no result from the worker"})
        if r["ok"]:
            times.append((r["heard"] - r["t0"]) * 1000)
            log.info("transfer timing: %s", r["steps"])
        else:
            print(f"n={n} failure: {r['error']}", file=sys.stderr)
    return {
        "n": n,
        "p50_ms": round(pct(times, 50), 1),
        "p95_ms": round(pct(times, 95), 1),
        "failures": n - len(times),
    }


def _with_error(record: logging.LogRecord) -> bool:
    """Show a record's ``error`` extra (the bench's own log; no personal data in it)."""
    error = getattr(record, "error", None)
    if error is not None and not getattr(record, "_error_shown", False):
        record.msg = f"{record.msg}: {error}"
        record._error_shown = True
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="single transfers per strategy")
    parser.add_argument("--concurrent", default="10,25", help="comma-separated N values")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help=f"client processes (0: 1 per {CALLS_PER_WORKER} calls)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="log the service's steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(relativeCreated)d %(name)s %(message)s")
    if args.verbose:
        logging.getLogger("softphone").setLevel(logging.INFO)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_with_error)
    if args.worker:
        asyncio.run(worker())
        return
    conc = [int(x) for x in args.concurrent.split(",") if x.strip()]
    out = asyncio.run(run(args.runs, conc, max(0, args.workers)))
    if args.json:
        # No measurement (every transfer of a run failed) is null: NaN is not JSON.
        print(json.dumps(_nan_to_none(out), allow_nan=False))
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
