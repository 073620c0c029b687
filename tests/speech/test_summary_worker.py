"""The offline summarizer's NER runs in a worker process, and a killed worker costs one card's NER.

spaCy holds the GIL while it loads and tags; in a thread of the app it
stalled the UI's event loop at a transfer's start. These tests run the real
summarizer: once in a fresh interpreter (to see that spaCy is never imported
there), once here with the worker killed by a real SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from softphone.domain.summary import SpeakerRoles
from softphone.speech.offline_summarizer import OfflineSummarizer
from tests.speech.corpus import Call, fact_recall, load_calls

ROOT = Path(__file__).resolve().parents[2]
# A tune-split call whose facts the named entities find and the patterns miss.
CALL = "02_password_reset"

CHILD = f"""
import asyncio, json, sys
sys.path.insert(0, {str(ROOT)!r})
from softphone.domain.summary import SpeakerRoles
from softphone.speech.offline_summarizer import OfflineSummarizer
from tests.speech.corpus import fact_recall, load_calls

async def main():
    call = next(c for c in load_calls() if c.id == {CALL!r})
    roles = SpeakerRoles(caller=call.caller_identity, agents=frozenset({{call.agent_identity}}))
    segs = call.reference_segments()
    ner = await OfflineSummarizer(timeout_s=120).summarize(segs, roles=roles)
    patterns = await OfflineSummarizer(timeout_s=120, ner=False).summarize(segs, roles=roles)
    print(json.dumps({{
        "spacy_here": "spacy" in sys.modules,
        "ner": fact_recall(call.facts, ner.to_text()),
        "patterns": fact_recall(call.facts, patterns.to_text()),
    }}))

asyncio.run(main())
"""


ORPHAN = f"""
import multiprocessing, sys, time
sys.path.insert(0, {str(ROOT)!r})
from softphone.speech.offline_summarizer import start_entity_worker

if __name__ == "__main__":
    worker, ready = start_entity_worker()
    ready.result(timeout=200)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(300)
"""


PREPARED = f"""
import json, multiprocessing, os, sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
from softphone.speech.worker_start import prepare_entity_worker

if __name__ == "__main__":
    # Asked from a thread that ends at once (a UI callback's turn), then again.
    asker = threading.Thread(target=prepare_entity_worker)
    asker.start()
    asker.join()
    prepare_entity_worker()
    deadline = time.monotonic() + 60
    while not multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    from softphone.speech.offline_summarizer import start_entity_worker
    worker, ready = start_entity_worker()  # the one started for us, not a new one
    loaded = ready.result(timeout=200)
    pid = worker.submit(os.getpid).result(timeout=60)
    print(json.dumps({{
        "loaded": loaded,
        "workers": [p.pid for p in multiprocessing.active_children()],
        "answered_from": pid,
        "starter": [t.name for t in threading.enumerate() if t.name == "ner-worker-start"],
    }}), flush=True)
"""


def the_call() -> tuple[Call, SpeakerRoles]:
    call = next(c for c in load_calls() if c.id == CALL)
    return call, SpeakerRoles(caller=call.caller_identity, agents=frozenset({call.agent_identity}))


def test_the_model_works_in_another_process_never_in_the_callers() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=240, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["spacy_here"] is False, "spaCy was imported by the summarizer's caller"
    assert result["ner"] > result["patterns"], result  # the model did find what patterns miss


def test_a_window_has_the_worker_started_on_a_thread_of_its_own() -> None:
    # What an agent window does as a call begins (prepare_entity_worker), not on its loop.
    out = subprocess.run(
        [sys.executable, "-c", PREPARED], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] is True
    assert len(result["workers"]) == 1, result  # asked twice, started once
    assert result["answered_from"] == result["workers"][0]  # alive after the asker ended
    assert result["starter"] == ["ner-worker-start"]


async def test_a_killed_worker_costs_one_cards_entities_and_is_started_again() -> None:
    call, roles = the_call()
    segs = call.reference_segments()
    summarizer = OfflineSummarizer(timeout_s=120)
    before = {p.pid for p in multiprocessing.active_children()}
    first = await summarizer.summarize(segs, roles=roles)
    workers = [p for p in multiprocessing.active_children() if p.pid not in before]
    if not workers:  # started by an earlier test of this session
        workers = multiprocessing.active_children()
    assert workers
    for worker in workers:
        assert worker.pid is not None and worker.pid != os.getpid()
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)
    # The card still comes (from the patterns), and the next one has the entities again.
    second = await summarizer.summarize(segs, roles=roles)
    assert second.source == "offline" and second.reason
    third = await summarizer.summarize(segs, roles=roles)
    assert fact_recall(call.facts, third.to_text()) == fact_recall(call.facts, first.to_text())
    assert fact_recall(call.facts, second.to_text()) < fact_recall(call.facts, first.to_text())
    alive = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert alive and all(p.pid not in {w.pid for w in workers} for p in alive)


def test_the_worker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """An app or backend killed with SIGKILL leaves no 150 MB worker behind."""
    script = tmp_path / "parent.py"  # a file: spawned workers import the main module
    script.write_text(ORPHAN)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids and all(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "the worker outlived its parent"


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
