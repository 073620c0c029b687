"""N warm transfers at once through the real backend replicas (``bench/scale.py``'s ``concurrent``).

The service is the real backend: one or more ``python -m softphone.backend``
replicas under uvicorn on one Redis (``tests/transfer/backend_process.py``).
The client apps (caller, A and B of each call) run in worker processes of
this module (``--worker``; one per ``CALLS_PER_WORKER`` calls), as real
clients of the backend with their own API keys: the caller's app creates the
call (``POST /v1/calls``) and joins with the token it gets, A and B ask for
their own tokens, B waits in the lobby. With several replicas, each client
lists them all, A's first replica (which then drives the transfer) differs
from B's, and calls alternate between the replicas.

The run is paced as in ``bench/transfer.py``'s concurrent rows (whose worker
helpers this reuses): calls are set up a few at a time (``SETUP_AT_ONCE`` in
all), all N are then in flight together (offers accepted, consulting,
callers on standby) and completed at once. Measured per call, in its
worker: from A calling ``complete()`` to the caller's tone arriving at B in
the transfer room (make-before-break). A call fails when its transfer does
not complete or B does not hear the caller within ``AUDIO_TIMEOUT_S``; the
reasons go to stderr.

Worker protocol (JSON lines): the parent writes one config line, then
``setup TAG`` and ``go`` lines on the worker's stdin; the worker writes
``{"ready": TAG}`` and ``{"result": TAG, ...}`` lines on its stdout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from livekit import rtc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transfer import (
    AUDIO_TIMEOUT_S,
    CALLER_HZ,
    CALLS_PER_WORKER,
    WORKER_FRAME_MS,
    WORKER_ONSET_MS,
    Onset,
    _close_all,
    _emit,
    _join_lobby,
    pct,
    run_workers,
    worker,
)
from softphone.client.caller_mover import CallerMover
from softphone.client.commands import CommandGuard
from softphone.client.remote_service import RemoteTransferService
from softphone.config import Secret
from softphone.media.session import RemoteAudio, RtcSession
from softphone.media.tone import SAMPLE_RATE, TonePlayer
from softphone.protocol import TransferRequest
from tests.transfer.backend_process import IDENTITIES

# Seconds the workers may take, once told to complete, to report every call.
RESULTS_TIMEOUT_S = AUDIO_TIMEOUT_S + 120


def _rotated(urls: list[str], first: int) -> list[str]:
    """``urls`` starting at index ``first`` (the replica a client asks first), then the rest."""
    k = first % len(urls)
    return urls[k:] + urls[:k]


def plan_calls(urls: list[str], keys: dict[str, str], n: int, workers: int) -> list[dict[str, Any]]:
    """One config entry per call: identities ``caller-i``, ``agent-a-i``, ``agent-b-i`` and routes.

    Call ``i`` sends its caller and A to replica ``i mod R`` first and B to
    the next one, so that with two replicas A's and B's apps always talk to
    different replicas and both replicas drive transfers.
    """
    if not 1 <= n <= IDENTITIES:
        raise ValueError(f"n must be between 1 and {IDENTITIES} (the backend's identities)")
    calls = []
    for i in range(n):
        c, a, b = f"caller-{i}", f"agent-a-{i}", f"agent-b-{i}"
        calls.append(
            {
                "worker": i % workers,
                "tag": str(i),
                "c": c,
                "a": a,
                "b": b,
                "c_key": keys[c],
                "a_key": keys[a],
                "b_key": keys[b],
                "c_urls": _rotated(urls, i),
                "a_urls": _rotated(urls, i),
                "b_urls": _rotated(urls, i + 1),
            }
        )
    return calls


async def concurrent_row(
    urls: list[str], keys: dict[str, str], *, n: int, workers: int = 0
) -> dict[str, Any]:
    """N transfers at once against the replicas at ``urls`` (of one deployment); one table row.

    Args:
        urls: The replicas' base URLs (a fresh deployment: identities
            ``*-0`` to ``*-(n-1)`` are used).
        keys: The API key of every identity, as the replicas know them.
        n: How many calls transfer at once.
        workers: Client processes (0: one per ``CALLS_PER_WORKER`` calls).

    Returns:
        ``{"n", "replicas", "p50_ms", "p95_ms", "failures"}`` (NaN without
        any successful call).
    """
    workers = workers or math.ceil(n / CALLS_PER_WORKER)
    calls = plan_calls(urls, keys, n, workers)
    results = await run_workers(
        Path(__file__).resolve(), calls, {}, n=n, results_timeout_s=RESULTS_TIMEOUT_S
    )
    label = f"n={n} replicas={len(urls)}"
    times = []
    steps: dict[str, list[float]] = {}
    for call in calls:
        r = results.get(call["tag"], {"ok": False, "error": "no result from the worker"})
        for k, v in r.get("steps", {}).items():
            steps.setdefault(k, []).append(v)
        if r["ok"]:
            times.append((r["heard"] - r["t0"]) * 1000)
        else:
            print(f"{label} call {call['tag']} failed: {r['error']}", file=sys.stderr)
    # Where the time goes, after complete() (for the reader; not in the row).
    for k, v in sorted(steps.items()):
        print(
            f"{label}: {k} +{pct(v, 50):.0f} ms p50, +{pct(v, 95):.0f} ms p95 ({len(v)} calls)",
            file=sys.stderr,
        )
    return {
        "n": n,
        "replicas": len(urls),
        "p50_ms": round(pct(times, 50), 1),
        "p95_ms": round(pct(times, 95), 1),
        "failures": n - len(times),
    }


# ---- the worker ------------------------------------------------------------------------
async def _worker_call(call: dict[str, Any], setup: asyncio.Event, go: asyncio.Event) -> None:
    """One call's three apps, as real clients of the backend; reports ``ready`` and ``result``."""
    tag = call["tag"]
    # Only what is measured is sent: the caller's voice, heard by B in R2.
    src = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=2 * WORKER_FRAME_MS)
    players = [TonePlayer(src, CALLER_HZ, frame_ms=WORKER_FRAME_MS)]
    closers: list[Any] = []
    stage = "setup"
    ready = False
    try:
        await setup.wait()
        for p in players:
            p.start()
        c_svc, a_svc, b_svc = (
            RemoteTransferService(
                base_url=call[f"{who}_urls"], api_key=Secret(call[f"{who}_key"]), timeout_s=30
            )
            for who in ("c", "a", "b")
        )
        closers += [c_svc, a_svc, b_svc]  # closed last
        stage = "create_call"
        ticket = await c_svc.create_call(caller=call["c"], agent=call["a"], requester=call["c"])
        room = ticket.call.room
        info = await c_svc.service_info()
        guard = CommandGuard(info)
        stage = "caller joins R1"
        c_sess = await RtcSession(
            url=ticket.token.url, token=ticket.token.token, connect_timeout_s=30
        ).connect()
        # The caller's mic goes out where it is measured: in R2 (on standby,
        # muted until the move).
        mover = CallerMover(session=c_sess, mic=src, guard=guard)
        closers.append(mover)
        marks: dict[str, float] = {}
        mover.on("joined", lambda _: marks.setdefault("caller in R2", time.monotonic()))
        mover.on("moved", lambda _: marks.setdefault("caller left R1", time.monotonic()))
        stage = "A joins R1"
        a_grant = await a_svc.mint_token(identity=call["a"], room=room, role="agent")
        closers.append(
            # A is not measured here: its session in R1 receives nothing.
            await RtcSession(
                url=a_grant.url, token=a_grant.token, connect_timeout_s=30, listen=False
            ).connect()
        )
        stage = "B joins the lobby"
        b_grant = await b_svc.mint_token(identity=call["b"], room=info.lobby_room, role="agent")
        offers: asyncio.Queue[Any] = asyncio.Queue()
        lobby = await _join_lobby(b_grant.token, b_grant.url, b_svc, None, offers, guard)
        closers.append(lobby)
        stage = "start_transfer"
        t_ticket = await a_svc.start_transfer(
            TransferRequest(
                caller=call["c"], from_agent=call["a"], to_agent=call["b"], call_room=room
            )
        )
        stage = "offer"
        offer = await asyncio.wait_for(offers.get(), 30)
        stage = "accept"
        b_sess = await lobby.accept(offer.transfer_id)

        def subscribed(audio: RemoteAudio) -> None:
            # Before complete() (not shown) when the standby admitted B.
            if audio.identity == call["c"]:
                marks.setdefault("B subscribed to the caller", time.monotonic())

        b_sess.on("remote_audio", subscribed)
        onset = Onset(b_sess, CALLER_HZ, frame_ms=WORKER_ONSET_MS)
        closers.append(onset)
        stage = "consulting"
        await a_svc.wait_for_phase(t_ticket.transfer_id, ["consulting"], timeout_s=30)
        standby = mover.standby(t_ticket.transfer.new_room)
        if standby is not None:  # the service's permission reaching the caller's app
            standby.on(
                "may_listen",
                lambda ok: marks.setdefault("caller may speak", time.monotonic()) if ok else None,
            )
        ready = True
        _emit({"ready": tag})
        await go.wait()
        stage = "complete"
        t0 = onset.after = time.monotonic()
        snap = await a_svc.complete(t_ticket.transfer_id, agent=call["a"])
        marks["complete() returned"] = time.monotonic()
        stage = "caller heard by B"
        heard = await onset.wait(t0, max(0.0, t0 + AUDIO_TIMEOUT_S - time.monotonic()))
        ok = snap.phase == "completed" and heard is not None
        steps = {k: round((v - t0) * 1000, 1) for k, v in marks.items() if v >= t0}
        error = "" if ok else f"{snap.phase} {snap.reason}, caller heard: {heard is not None}"
        if not ok:
            error += " (" + ", ".join(f"{k} +{v:.0f} ms" for k, v in sorted(steps.items())) + ")"
        _emit({"result": tag, "t0": t0, "heard": heard, "ok": ok, "error": error, "steps": steps})
    except Exception as exc:  # every failure is reported, with its stage
        _emit({"result": tag, "ok": False, "error": f"{stage}: {exc!r}"})
        if not ready:
            _emit({"ready": tag})
    finally:
        await _close_all(closers, players)


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        sys.exit("this module is bench/scale.py's worker: run bench/scale.py")
    # The SDK logs every session's closing data channels as errors; a call's
    # failure is reported with its stage instead.
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    asyncio.run(worker(lambda _cfg, call, setup, go: _worker_call(call, setup, go)))
    sys.stdout.flush()
    # Every result is out: skip the RTC SDK's native teardown, which now and
    # then aborts the process at exit (see tests/conftest.py).
    os._exit(0)
