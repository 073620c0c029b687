"""Speech under load: do token requests stay fast while 50 speech uploads arrive at once?

Usage: ``./dev bench speech_load [--uploads 50] [--clip-s 10] [--json]``

Starts a local LiveKit server and the real backend under uvicorn
(``tests/transfer/backend_process.py``, default speech limits unless
``--backend-arg`` says otherwise), warms the speech worker with one upload,
then sends ``--uploads`` uploads of a ``--clip-s`` second espeak-ng
recording at once, each with its own agent key, while two clients keep
asking ``POST /v1/tokens`` one request after the other until the last
upload is answered.

:func:`speech_under_load` returns (and ``--json`` prints) a dict with
``tokens_p95_ms`` (the target is 100 ms or less), ``speech_p95_ms`` (of the
uploads answered 200), ``rejected`` (429 and 503 answers, the load the
backend shed), and more: ``tokens_p50_ms``, ``tokens``, ``speech_p50_ms``,
``accepted``, ``failed`` (any other answer or a transport error),
``rejected_by_status``, ``clip_s`` and ``backend_rss_mb`` (after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from tests.transfer.backend_process import BackendProcess

LOBBY = "lobby-speech-load"
TEXT = (
    "Hello, I am calling about my order number one two three four five. "
    "The parcel arrived yesterday and the screen was cracked. "
    "I would like a replacement or a refund, please call me back tomorrow. "
)


def p(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile in ms (values in seconds), NaN when there are none."""
    if not values:
        return float("nan")
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 1)


async def speech_clip(tmp: Path, seconds: float) -> tuple[bytes, float]:
    """A WAV of espeak-ng speech cut to ``seconds`` (the text repeats as needed)."""
    path = tmp / "speech.wav"
    proc = await asyncio.create_subprocess_exec(
        "espeak-ng", "-w", str(path), TEXT * max(1, int(seconds // 8) + 1)
    )
    if await proc.wait() != 0:
        raise RuntimeError("espeak-ng failed")
    with wave.open(str(path), "rb") as src:
        params = src.getparams()
        frames = src.readframes(int(seconds * src.getframerate()))
    cut = tmp / "clip.wav"
    with wave.open(str(cut), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames)
    n = len(frames) // (params.sampwidth * params.nchannels)
    return cut.read_bytes(), n / params.framerate


async def _rss_mb(http: httpx.AsyncClient, key: str) -> float:
    res = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    for family in text_string_to_metric_families(res.text):
        for s in family.samples:
            if s.name == "process_resident_memory_bytes":
                return round(s.value / 2**20, 1)
    return float("nan")


async def speech_under_load(
    *,
    uploads: int = 50,
    clip_s: float = 10.0,
    backend_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Token latency and speech outcomes while ``uploads`` uploads of ``clip_s`` s arrive at once.

    Returns:
        ``tokens_p95_ms``, ``speech_p95_ms``, ``rejected`` and the details
        named in the module docstring.
    """
    if uploads > 390:
        raise ValueError("at most 390 uploads (one agent key each)")
    with tempfile.TemporaryDirectory(prefix="speech-load-") as name:
        tmp = Path(name)
        clip, clip_len = await speech_clip(tmp, clip_s)
        lk = LocalLiveKitServer(binary=ensure_server_binary(), log_path=tmp / "livekit.log")
        async with (
            lk,
            BackendProcess(
                livekit_server=lk,
                workdir=tmp,
                lobby=LOBBY,
                offer_timeout_s=30.0,
                extra_args=tuple(backend_args),
            ) as backend,
            httpx.AsyncClient(
                base_url=backend.url,
                timeout=900,
                limits=httpx.Limits(max_connections=uploads + 10, max_keepalive_connections=20),
            ) as http,
        ):

            def speech_headers(identity: str) -> dict[str, str]:
                return {
                    "Authorization": f"Bearer {backend.keys[identity]}",
                    "Content-Type": "audio/wav",
                }

            # Warm up: the worker process starts and loads its model once.
            warm = await http.post("/v1/speech", content=clip, headers=speech_headers("agent-b-0"))
            if warm.status_code != 200:
                raise RuntimeError(f"warm-up upload failed: {warm.status_code} {warm.text}")
            stop = asyncio.Event()
            token_s: list[float] = []
            token_failures = 0

            async def tokens(identity: str) -> None:
                nonlocal token_failures
                headers = {"Authorization": f"Bearer {backend.keys[identity]}"}
                while not stop.is_set():
                    started = time.monotonic()
                    res = await http.post("/v1/tokens", json={"room": LOBBY}, headers=headers)
                    if res.status_code == 200:
                        token_s.append(time.monotonic() - started)
                    else:
                        token_failures += 1
                    await asyncio.sleep(0.02)

            async def upload(n: int) -> tuple[int, float]:
                started = time.monotonic()
                try:
                    res = await http.post(
                        "/v1/speech", content=clip, headers=speech_headers(f"agent-a-{n}")
                    )
                except httpx.HTTPError:
                    return -1, time.monotonic() - started
                return res.status_code, time.monotonic() - started

            askers = [asyncio.create_task(tokens(f"agent-b-{n}")) for n in (1, 2)]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            results = await asyncio.gather(*(upload(n) for n in range(uploads)))
            wall_s = time.monotonic() - started
            stop.set()
            await asyncio.gather(*askers)
            rss = await _rss_mb(http, backend.keys["supervisor-0"])
    statuses = Counter(status for status, _ in results)
    accepted = [s for status, s in results if status == 200]
    rejected = {str(k): v for k, v in sorted(statuses.items()) if k in (429, 503)}
    return {
        "tokens_p95_ms": p(token_s, 95),
        "speech_p95_ms": p(accepted, 95),
        "rejected": sum(rejected.values()),
        "tokens_p50_ms": p(token_s, 50),
        "tokens": len(token_s),
        "token_failures": token_failures,
        "speech_p50_ms": p(accepted, 50),
        "accepted": len(accepted),
        "failed": sum(v for k, v in statuses.items() if k not in (200, 429, 503)),
        "rejected_by_status": rejected,
        "uploads": uploads,
        "clip_s": round(clip_len, 2),
        "wall_s": round(wall_s, 1),
        "backend_rss_mb": rss,
    }


def main() -> None:
    """Run :func:`speech_under_load` and print its result (``--json``: one JSON object)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50, help="uploads sent at once")
    parser.add_argument("--clip-s", type=float, default=10.0, help="seconds of speech per upload")
    parser.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        help="a flag for the backend, e.g. --backend-arg=--speech-workers=2 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(
        speech_under_load(uploads=args.uploads, clip_s=args.clip_s, backend_args=args.backend_arg)
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
