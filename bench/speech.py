"""Speech benchmark: transcription accuracy, live lag and speed, summary fact recall.

Runs over the test corpus (``tests/data/calls/``, spoken by espeak-ng), its
tuning split for the top-level keys and its held-out split (calls no
pattern, prompt or threshold was tuned on) under ``heldout``:

- ``wer_live``: word error rate of the live engine (VAD + faster-whisper in a
  worker thread), fed each speaker's track in real time, as in a call;
- ``wer_batch``: word error rate of the local batch engine over each
  speaker's recording;
- ``live_lag_ms``: from the end of an utterance to its final segment (p50, p95);
- ``rtf_live``: seconds the live engine's model was busy per second of call;
- ``fact_recall``: share of each call's key facts found in the summary card,
  per summarizer (``offline`` always; ``openai`` when ``--openai-base-url``
  or ``OPENAI_API_KEY`` is given, against that real endpoint);
- ``fact_recall_offline_live``: the offline summarizer's fact recall on the
  live engine's transcript instead of the script;
- ``offline_summary_1h_ms``: offline summary of a one-hour transcript;
- ``heldout``: ``{wer_live, wer_batch, fact_recall_offline,
  fact_recall_offline_live}`` over the held-out split.

Every summarizer is told who the caller and the agent are
(:class:`~softphone.domain.summary.SpeakerRoles`), as the call registry tells
it in a call. Another summarizer is measured by passing it to :func:`run`
(``run(args, extra_summarizers={"llm_local": summarizer})``), or a measure
that runs its own (``run(args, extra_recalls={"llm_local": measure})``, what
``--llm-local`` does with ``bench/_llm_local.py``): its recall on the
reference transcripts lands in ``fact_recall`` under that name (and in
``heldout.fact_recall`` for the held-out split).

Usage::

    ./dev bench speech                 # table
    ./dev bench speech --json          # one JSON object with exactly the keys above
    ./dev bench speech --calls 2       # quicker: the first two calls of each split
    ./dev bench speech --facts-only    # no audio: fact recall from the scripts only
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.config import Secret
from softphone.domain.summary import SpeakerRoles
from softphone.domain.transcript import TranscriptSegment
from softphone.errors import SpeechError
from softphone.speech.live_transcriber import LiveTranscriber
from softphone.speech.local_stt import LocalStt
from softphone.speech.offline_summarizer import OfflineSummarizer
from softphone.speech.stt import BatchStt
from softphone.speech.summarizer import Summarizer
from softphone.speech.whisper_engine import BUNDLED, shared_engine
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
    rc: RenderedCall, *, speed: float, stt_model: str = BUNDLED, **options: Any
) -> tuple[list[TranscriptSegment], list[float], float]:
    """Feed a rendered call to the live engine in (scaled) real time.

    Returns the final segments, the lag of each final (s) and the model's busy time (s).
    """
    engine = shared_engine(model=stt_model)
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


async def batch_call(rc: RenderedCall, stt: BatchStt, tmp: Path) -> list[TranscriptSegment]:
    """Transcribe each speaker's recording of a call with the batch engine."""
    segments: list[TranscriptSegment] = []
    for ident, track in rc.tracks.items():
        path = write_wav(tmp / f"{rc.call.id}-{ident.replace(':', '_')}.wav", track)
        segments += (await stt.transcribe(path, speaker=ident)).segments
    return segments


def summarizers(
    args: argparse.Namespace, extra: Mapping[str, Summarizer] | None = None
) -> dict[str, Summarizer]:
    """The summarizers to measure: offline, openai when configured, and ``extra``."""
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
    out.update(extra or {})
    return out


def roles_of(call: Call) -> SpeakerRoles:
    """Who is who in ``call``, as the call registry would say."""
    return SpeakerRoles(caller=call.caller_identity, agents=frozenset({call.agent_identity}))


async def recall_of(
    summarizer: Summarizer, calls: list[Call], segments: Mapping[str, list[TranscriptSegment]]
) -> float:
    """Share of all the calls' facts found in ``summarizer``'s cards of ``segments``."""
    found = total = 0.0
    failed = 0
    for c in calls:
        total += len(c.facts)
        try:
            card = await summarizer.summarize(segments[c.id], roles=roles_of(c))
        except SpeechError:
            failed += 1  # a failed summary finds no facts
            continue
        found += fact_recall(c.facts, card.to_text()) * len(c.facts)
    if failed:
        print(f"{summarizer.name}: {failed} of {len(calls)} summaries failed", file=sys.stderr)
    return round(found / total, 4) if total else float("nan")


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


# A measure of fact recall that manages its own summarizer (e.g. starts a server).
RecallMeasure = Callable[[list[Call]], Awaitable[float]]


async def measure_split(
    calls: list[Call],
    args: argparse.Namespace,
    sums: Mapping[str, Summarizer],
    progress: Any,
    recalls: Mapping[str, RecallMeasure] | None = None,
) -> dict[str, Any]:
    """Every measure over ``calls``: WER, lag, busy time, fact recall per summarizer."""
    reference = {c.id: c.reference_segments() for c in calls}
    out: dict[str, Any] = {
        "fact_recall": {name: await recall_of(s, calls, reference) for name, s in sums.items()},
        "calls": len(calls),
    }
    for name, measure in (recalls or {}).items():
        out["fact_recall"][name] = round(await measure(calls), 4)
    if args.facts_only:
        return out
    rendered = [render_call(c) for c in calls]
    engine = await asyncio.to_thread(shared_engine, model=args.stt_model)  # load once, untimed
    live_err = live_words = 0
    lags: list[float] = []
    busy = call_s = 0.0
    live_segments: dict[str, list[TranscriptSegment]] = {}
    for rc in rendered:
        segs, call_lags, call_busy = await live_call(
            rc,
            speed=args.speed,
            stt_model=args.stt_model,
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
        async with LocalStt(engine=engine) as stt:
            for rc in rendered:
                segs = await batch_call(rc, stt, Path(tmp))
                e, w = call_errors(rc.call, segs)
                batch_err += e
                batch_words += w
                progress(f"batch {rc.call.id}: WER {e / w:.3f}")
    out.update(
        wer_live=round(live_err / live_words, 4),
        wer_batch=round(batch_err / batch_words, 4),
        lags=lags,
        busy_s=busy,
        call_audio_s=call_s,
        fact_recall_offline_live=await recall_of(sums["offline"], calls, live_segments),
    )
    return out


async def run(
    args: argparse.Namespace,
    extra_summarizers: Mapping[str, Summarizer] | None = None,
    extra_recalls: Mapping[str, RecallMeasure] | None = None,
) -> dict[str, Any]:
    """Measure both splits.

    Args:
        args: The command line.
        extra_summarizers: Measured beside the offline one, by name, on the
            reference transcripts (each told the roles; closed afterwards).
        extra_recalls: Fact-recall measures that run their own summarizer
            (``{"llm_local": fact_recall_llm_local}``); ``--llm-local`` adds that one.
    """
    progress = (
        (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    )
    tune = load_calls("tune")
    heldout = load_calls("heldout")
    if args.calls:
        tune, heldout = tune[: args.calls], heldout[: args.calls]
    sums = summarizers(args, extra_summarizers)
    recalls = dict(extra_recalls or {})
    if args.llm_local:
        from bench._llm_local import fact_recall_llm_local

        recalls["llm_local"] = fact_recall_llm_local
    try:
        t = await measure_split(tune, args, sums, progress, recalls)
        h = await measure_split(heldout, args, sums, progress, recalls)
    finally:
        for s in sums.values():
            await s.aclose()

    off = OfflineSummarizer()
    hour = one_hour_transcript(load_calls("tune"))
    await asyncio.to_thread(off.summarize_sync, hour[:10])  # the model loaded, outside the timing
    times = []
    for _ in range(5):
        started = time.perf_counter()
        await asyncio.to_thread(off.summarize_sync, hour)
        times.append((time.perf_counter() - started) * 1000)

    nan = float("nan")
    lags = t.get("lags", [])
    result = {
        "wer_live": t.get("wer_live", nan),
        "wer_batch": t.get("wer_batch", nan),
        "live_lag_ms": {
            "p50": round(percentile(lags, 50) * 1000) if lags else nan,
            "p95": round(percentile(lags, 95) * 1000) if lags else nan,
        },
        "rtf_live": round(t["busy_s"] / t["call_audio_s"], 4) if "busy_s" in t else nan,
        "fact_recall": t["fact_recall"],
        "fact_recall_offline_live": t.get("fact_recall_offline_live", nan),
        "offline_summary_1h_ms": round(statistics.median(times), 1),
        "heldout": {
            "wer_live": h.get("wer_live", nan),
            "wer_batch": h.get("wer_batch", nan),
            "fact_recall_offline": h["fact_recall"]["offline"],
            "fact_recall_offline_live": h.get("fact_recall_offline_live", nan),
            "fact_recall": h["fact_recall"],
        },
    }
    extras = {
        "calls": t["calls"],
        "heldout_calls": h["calls"],
        "call_audio_s": round(t.get("call_audio_s", 0.0) + h.get("call_audio_s", 0.0), 1),
        "finals": len(lags),
        "one_hour_segments": len(hour),
    }
    return {"result": result, "extras": extras}


def _no_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


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
        "--facts-only", action="store_true", help="no audio: fact recall from the scripts only"
    )
    parser.add_argument(
        "--llm-local",
        action="store_true",
        help="also measure fact_recall.llm_local (local llama.cpp server, bench/_llm_local.py)",
    )
    parser.add_argument(
        "--silence-s", type=float, default=0.5, help="live: quiet ending an utterance"
    )
    parser.add_argument(
        "--stt-model",
        default=BUNDLED,
        help="the recogniser: tiny.en or base (both bundled), auto, or a model path",
    )
    parser.add_argument("--no-partials", action="store_true", help="live: no partial segments")
    parser.add_argument(
        "--partial-interval-s",
        type=float,
        default=inspect.signature(LiveTranscriber).parameters["partial_interval_s"].default,
        help="live: speech between partials (default: the transcriber's)",
    )
    args = parser.parse_args()
    out = asyncio.run(run(args))
    r, x = out["result"], out["extras"]
    if args.json:
        print(json.dumps(_no_nan(r)))  # a measure not taken (--facts-only) is null
        return
    h = r["heldout"]
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
        ("fact recall, offline on live transcript", f"{r['fact_recall_offline_live']:.3f}"),
        ("offline summary of 1 h (target < 1000 ms)", f"{r['offline_summary_1h_ms']:.1f} ms"),
        ("held-out: WER live (target <= 0.12)", f"{h['wer_live']:.3f}"),
        ("held-out: WER batch (target <= 0.08)", f"{h['wer_batch']:.3f}"),
        ("held-out: fact recall offline (target >= 0.90)", f"{h['fact_recall_offline']:.3f}"),
        (
            "held-out: fact recall offline, live (target >= 0.75)",
            f"{h['fact_recall_offline_live']:.3f}",
        ),
        *[
            (f"held-out: fact recall, {name}", f"{v:.3f}")
            for name, v in h["fact_recall"].items()
            if name != "offline"
        ],
        (
            "calls (tuning / held-out) / call audio",
            f"{x['calls']} / {x['heldout_calls']} / {x['call_audio_s']} s",
        ),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
