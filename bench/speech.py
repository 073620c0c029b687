"""Speech benchmark: transcription accuracy, live lag and speed, summary fact recall.

Runs over the whole test corpus (``tests/data/calls/``, spoken by espeak-ng):

- ``wer_live``: word error rate of the live engine (VAD + faster-whisper in a
  worker thread), fed each speaker's track in real time, as in a call;
- ``wer_batch``: word error rate of the local batch engine over each
  speaker's recording;
- ``live_lag_ms``: from the end of an utterance to its final segment (p50, p95);
- ``rtf_live``: seconds the live engine's model was busy per second of call;
- ``fact_recall``: share of each call's key facts found in the summary card,
  per summarizer (``offline`` always; ``openai`` when ``--openai-base-url``
  or ``OPENAI_API_KEY`` is given, against that real endpoint);
- ``offline_summary_1h_ms``: offline summary of a one-hour transcript.

Usage::

    ./dev bench speech            # table
    ./dev bench speech --json     # one JSON object with exactly the keys above
    ./dev bench speech --calls 2  # quicker: the first two calls only
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.config import Secret
from softphone.domain.transcript import TranscriptSegment
from softphone.speech.live_transcriber import LiveTranscriber
from softphone.speech.local_stt import LocalStt
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.summarizer import Summarizer
from softphone.speech.whisper_engine import shared_engine
from tests.speech.corpus import (
    SAMPLE_RATE,
    Call,
    RenderedCall,
    edit_distance,
    fact_recall,
    load_calls,
    normalize,
    render_call,
    write_wav,
)

CHUNK = SAMPLE_RATE // 50  # 20 ms, like an audio device callback


def percentile(values: list[float], q: float) -> float:
    """The ``q`` percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


async def live_call(
    rc: RenderedCall, *, speed: float, **options: Any
) -> tuple[list[TranscriptSegment], list[float], float]:
    """Feed a rendered call to the live engine in (scaled) real time.

    Returns the final segments, the lag of each final (s) and the model's busy time (s).
    """
    engine = shared_engine()
    finals: list[tuple[TranscriptSegment, float]] = []
    t0 = time.monotonic()
    clock = (lambda: (time.monotonic() - t0) * speed) if speed != 1.0 else time.monotonic
    live = LiveTranscriber(engine=engine, clock=clock, call_started_at=clock(), **options)
    async with live:
        live.on("segment", lambda s: finals.append((s, time.monotonic())) if s.final else None)
        n = len(next(iter(rc.tracks.values())))
        start = time.monotonic()
        for k, i in enumerate(range(0, n, CHUNK)):
            for ident, track in rc.tracks.items():
                live.feed(ident, track[i : i + CHUNK], sample_rate=SAMPLE_RATE)
            delay = start + (k + 1) * CHUNK / SAMPLE_RATE / speed - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        await live.flush()
        busy = live.busy_s
    lags: list[float] = []
    for utt in rc.utterances:
        # An utterance is done when the last final segment overlapping it has arrived.
        done = [
            at
            for seg, at in finals
            if seg.speaker == utt.identity
            and min(utt.end_s, seg.end_s) - max(utt.start_s, seg.start_s) > 0
        ]
        if done:
            lags.append((max(done) - (start + utt.end_s / speed)) * speed)
    return [s for s, _ in finals], lags, busy


def call_errors(call: Call, segments: list[TranscriptSegment]) -> tuple[int, int]:
    """Word errors and reference words of a call, per speaker stream."""
    errors = words = 0
    for ident in call.identities.values():
        ref = normalize(call.reference_text(ident))
        hyp = normalize(
            " ".join(
                s.text for s in sorted(segments, key=lambda s: s.start_s) if s.speaker == ident
            )
        )
        errors += edit_distance(ref, hyp)
        words += len(ref)
    return errors, words


async def batch_call(rc: RenderedCall, stt: LocalStt, tmp: Path) -> list[TranscriptSegment]:
    """Transcribe each speaker's recording of a call with the batch engine."""
    segments: list[TranscriptSegment] = []
    for ident, track in rc.tracks.items():
        path = write_wav(tmp / f"{rc.call.id}-{ident.replace(':', '_')}.wav", track)
        segments += (await stt.transcribe(path, speaker=ident)).segments
    return segments


def summarizers(args: argparse.Namespace) -> dict[str, Summarizer]:
    """The summarizers to measure."""
    out: dict[str, Summarizer] = {"offline": OfflineSummarizer()}
    key = os.environ.get("OPENAI_API_KEY", "")
    if args.openai_base_url or key:
        from softphone.speech.openai_summarizer import OpenAISummarizer

        out["openai"] = OpenAISummarizer(
            api_key=Secret(key or "none"),
            base_url=args.openai_base_url or "",
            model=args.openai_model,
            timeout_s=60.0,
        )
    return out


def one_hour_transcript(calls: list[Call]) -> list[TranscriptSegment]:
    """About an hour of call: the corpus' turns repeated, 4 s each."""
    base = [s for c in calls for s in c.reference_segments()]
    segs: list[TranscriptSegment] = []
    i = 0
    while i * 4.0 < 3600:
        s = base[i % len(base)]
        segs.append(TranscriptSegment(s.speaker, i * 4.0, i * 4.0 + 3.5, s.text))
        i += 1
    return segs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    calls = load_calls()[: args.calls] if args.calls else load_calls()
    rendered = [render_call(c) for c in calls]
    await asyncio.to_thread(shared_engine)  # load once, outside the timings
    progress = (
        (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    )

    live_err = live_words = 0
    lags: list[float] = []
    busy = call_s = 0.0
    live_segments: dict[str, list[TranscriptSegment]] = {}
    for rc in rendered:
        segs, call_lags, call_busy = await live_call(
            rc,
            speed=args.speed,
            silence_s=args.silence_s,
            partials=not args.no_partials,
            partial_interval_s=args.partial_interval_s,
        )
        e, w = call_errors(rc.call, segs)
        live_err += e
        live_words += w
        lags += call_lags
        busy += call_busy
        call_s += rc.duration_s
        live_segments[rc.call.id] = segs
        progress(f"live  {rc.call.id}: WER {e / w:.3f}, lag p95 {percentile(call_lags, 95):.2f} s")

    batch_err = batch_words = 0
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalStt(engine=shared_engine()) as stt:
            for rc in rendered:
                segs = await batch_call(rc, stt, Path(tmp))
                e, w = call_errors(rc.call, segs)
                batch_err += e
                batch_words += w
                progress(f"batch {rc.call.id}: WER {e / w:.3f}")

    recall: dict[str, float] = {}
    recall_live_offline = 0.0
    for name, summarizer in summarizers(args).items():
        found = total = 0.0
        async with summarizer:
            for c in calls:
                card = await summarizer.summarize(c.reference_segments())
                found += fact_recall(c.facts, card.to_text()) * len(c.facts)
                total += len(c.facts)
        recall[name] = round(found / total, 4)
    off = OfflineSummarizer()
    found = total = 0.0
    for c in calls:
        card = await off.summarize(live_segments[c.id])
        found += fact_recall(c.facts, card.to_text()) * len(c.facts)
        total += len(c.facts)
    recall_live_offline = found / total

    hour = one_hour_transcript(load_calls())
    times = []
    for _ in range(5):
        t = time.perf_counter()
        off.summarize_sync(hour)
        times.append((time.perf_counter() - t) * 1000)

    result = {
        "wer_live": round(live_err / live_words, 4),
        "wer_batch": round(batch_err / batch_words, 4),
        "live_lag_ms": {
            "p50": round(percentile(lags, 50) * 1000),
            "p95": round(percentile(lags, 95) * 1000),
        },
        "rtf_live": round(busy / call_s, 4),
        "fact_recall": recall,
        "offline_summary_1h_ms": round(statistics.median(times), 1),
    }
    extras = {
        "calls": len(calls),
        "call_audio_s": round(call_s, 1),
        "finals": len(lags),
        "fact_recall_offline_on_live_transcript": round(recall_live_offline, 4),
        "one_hour_segments": len(hour),
    }
    return {"result": result, "extras": extras}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=0, help="only the first N calls")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="feed the live engine N times faster than real time",
    )
    parser.add_argument(
        "--openai-base-url", default="", help="also measure an OpenAI-compatible summarizer"
    )
    parser.add_argument("--openai-model", default="gpt-4o-mini")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--silence-s", type=float, default=0.5, help="live: quiet ending an utterance"
    )
    parser.add_argument("--no-partials", action="store_true", help="live: no partial segments")
    parser.add_argument(
        "--partial-interval-s", type=float, default=1.5, help="live: speech between partials"
    )
    args = parser.parse_args()
    out = asyncio.run(run(args))
    r, x = out["result"], out["extras"]
    if args.json:
        print(json.dumps(r))
        return
    rows = [
        ("WER live (target <= 0.10)", f"{r['wer_live']:.3f}"),
        ("WER batch (target <= 0.10)", f"{r['wer_batch']:.3f}"),
        (
            "live lag p50 / p95 ms (target p95 < 2000)",
            f"{r['live_lag_ms']['p50']} / {r['live_lag_ms']['p95']}",
        ),
        ("live real-time factor", f"{r['rtf_live']:.3f}"),
        *[
            (f"fact recall, {name} (target offline >= 0.90)", f"{v:.3f}")
            for name, v in r["fact_recall"].items()
        ],
        (
            "fact recall, offline on live transcript",
            f"{x['fact_recall_offline_on_live_transcript']:.3f}",
        ),
        ("offline summary of 1 h (target < 1000 ms)", f"{r['offline_summary_1h_ms']:.1f} ms"),
        ("calls / call audio", f"{x['calls']} / {x['call_audio_s']} s"),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
