"""Fact recall of the openai summarizer against a real local LLM (llama.cpp, Gemma 3 270M).

``bench/speech.py`` reports it as ``fact_recall.llm_local``: the share of the
corpus' key facts found in the cards the summarizer makes from each call's
reference transcript, weighted by facts, exactly as it measures the other
summarizers. A summary that fails (timeout, invalid output twice) counts
as no facts found; how many failed goes to stderr.

The LLM environment is built once into ``~/.cache/softphone/llm`` if absent
(see :mod:`softphone.infra.llm_server`); the server is started for the
measurement and stopped after it.

Standalone::

    .venv/bin/python bench/_llm_local.py [--calls N] [--split tune|heldout|all]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softphone.errors import SpeechError
from softphone.infra.llm_server import LocalLlmServer, ensure_llm_environment
from softphone.speech.openai_summarizer import OpenAISummarizer
from tests.speech.corpus import Call, fact_recall, load_calls

# Generous: on a loaded 2-core machine one summary takes tens of seconds.
SUMMARY_TIMEOUT_S = 300.0
# A good card takes 150-250 tokens; a model that loops would otherwise run
# on to the summarizer's default of 1024 (minutes here), to be cut anyway.
MAX_TOKENS = 384


def _progress(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


async def fact_recall_llm_local(calls: list[Call]) -> float:
    """Fact recall of the openai summarizer on a local llama.cpp server over ``calls``.

    Args:
        calls: Corpus calls; each is summarized from its reference transcript.

    Returns:
        Facts found over facts expected, in [0, 1].
    """
    environment = await asyncio.to_thread(ensure_llm_environment)
    found = total = 0.0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        async with LocalLlmServer(environment=environment, work_dir=Path(tmp)) as server:
            _progress(f"llm_local: model loaded and serving in {server.startup_seconds:.1f} s")
            async with OpenAISummarizer(
                api_key=server.api_key,
                base_url=server.base_url,
                model=server.model,
                json_mode="json_object",
                timeout_s=SUMMARY_TIMEOUT_S,
                max_retries=0,
                max_tokens=MAX_TOKENS,
                system_role=False,
            ) as summarizer:
                for call in calls:
                    started = time.monotonic()
                    try:
                        card = await summarizer.summarize(call.reference_segments())
                        recall = fact_recall(call.facts, card.to_text())
                    except SpeechError as exc:
                        failed += 1
                        recall = 0.0
                        _progress(f"llm_local {call.id}: failed: {exc.message}")
                    found += recall * len(call.facts)
                    total += len(call.facts)
                    _progress(
                        f"llm_local {call.id}: recall {recall:.2f} "
                        f"in {time.monotonic() - started:.1f} s"
                    )
            _progress(f"llm_local: server peak RSS {_peak_rss_mb(server):.0f} MB")
            for kind, rate in _token_rates(server.log_path).items():
                _progress(f"llm_local: {kind} {rate:.1f} tokens/s (mean over requests)")
    if failed:
        _progress(f"llm_local: {failed} of {len(calls)} summaries failed")
    return found / total if total else 0.0


def _peak_rss_mb(server: LocalLlmServer) -> float:
    """The server process's peak resident memory (``VmHWM``), in MB."""
    status = Path(f"/proc/{server.pid}/status").read_text(encoding="utf-8")
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


_RATE = re.compile(
    r"llama_perf_context_print:\s+(prompt eval|eval) time.*?([\d.]+) tokens per second"
)


def _token_rates(log_path: Path) -> dict[str, float]:
    """Mean prompt and generation speed from llama.cpp's per-request timings in the log."""
    rates: dict[str, list[float]] = {}
    for kind, rate in _RATE.findall(log_path.read_text(encoding="utf-8", errors="replace")):
        rates.setdefault(kind, []).append(float(rate))
    return {k: sum(v) / len(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=0, help="only the first N calls")
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default="all")
    args = parser.parse_args()
    calls = load_calls(None if args.split == "all" else args.split)
    calls = calls[: args.calls] if args.calls else calls
    recall = asyncio.run(fact_recall_llm_local(calls))
    print(f"fact_recall.llm_local ({args.split}, {len(calls)} calls): {recall:.4f}")


if __name__ == "__main__":
    main()
